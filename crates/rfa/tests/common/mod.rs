//! Shared by the end-to-end tests: the demo configuration cut to a small slice of the embedded
//! real data, and small text data sets (`text`).
// Each test binary uses part of this module.
#![allow(dead_code)]

pub mod text;

use std::process::{Command, Output};

use std::path::Path;

use rfa::Run;
use rfa::config::RunConfig;
use rfa::engine::UnlearnLog;

pub type AB = burn::backend::Autodiff<burn::backend::NdArray<f32>>;

/// The demo on 200 training / 100 test images, `train_epochs` epochs, one pass of unlearning.
pub fn tiny(name: &str, runs: &Path, train_epochs: usize) -> RunConfig {
    let mut c = RunConfig::demo();
    c.name = name.into();
    c.runs_dir = runs.to_path_buf();
    c.data.max_train = 200;
    c.data.max_test = 100;
    c.train.epochs = train_epochs;
    c.unlearn.epochs = 1;
    c
}

/// The unlearning log an `rfa unlearn` wrote into `dir` of the run.
pub fn unlearn_log(run: &Run, dir: &str) -> UnlearnLog {
    serde_json::from_str(
        &std::fs::read_to_string(run.dir.join(dir).join("unlearn_log.json")).unwrap(),
    )
    .unwrap()
}

/// The `rfa` command of this build, run with `args`.
pub fn rfa_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rfa")).args(args).output().unwrap()
}

/// A command's stdout; its stderr is the panic message when it failed.
pub fn stdout_or_panic(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A failed command's stderr; panics when it succeeded.
pub fn stderr_of_failure(out: Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `rfa` arguments for a tiny command-line run: `name` in `runs`, forgetting `forget`, 40
/// training and 20 test images, one epoch of training and one of unlearning.
pub fn tiny_args(name: &str, runs: &Path, forget: &str) -> Vec<String> {
    let runs = runs.to_str().unwrap();
    [
        "--name",
        name,
        "--runs-dir",
        runs,
        "--forget",
        forget,
        "--set",
        "data.max_train=40",
        "--set",
        "data.max_test=20",
        "--set",
        "train.epochs=1",
        "--set",
        "unlearn.epochs=1",
    ]
    .map(String::from)
    .to_vec()
}
