//! Crash safety. Each writing command is killed at every one of its write points in turn: the
//! process aborts there, no destructor runs, nothing is cleaned up (`RFA_FAULT_AT_WRITE=N`,
//! lora-core's `fault-injection` feature, on in test builds). After each kill the run folder holds
//! the previous state intact or the new one complete, never a mix; running the command again
//! then gives exactly what an uninterrupted run gives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// A run small enough to be killed some thirty times per command.
const SMALL: &[&str] = &[
    "--set",
    "data.max_train=40",
    "--set",
    "data.max_test=40",
    "--set",
    "train.epochs=2",
    "--set",
    "unlearn.epochs=1",
];

fn rfa(runs: &Path, args: &[&str], fault_at: Option<usize>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rfa"));
    // The command's own settings come last, so that they override SMALL's.
    cmd.arg(args[0]).args(["--name", "f", "--runs-dir"]).arg(runs).args(SMALL).args(&args[1..]);
    match fault_at {
        Some(n) => cmd.env("RFA_FAULT_AT_WRITE", n.to_string()),
        None => cmd.env_remove("RFA_FAULT_AT_WRITE"),
    };
    cmd.output().unwrap()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the command was killed by the fault switch (else it ran to its end).
fn killed(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hit = stderr.contains("fault injection: killed at write point");
    assert!(hit || out.status.success(), "failed without being killed:\n{stderr}");
    assert!(!hit || !out.status.success(), "killed yet successful:\n{stderr}");
    hit
}

fn sha256(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

/// SHA-256 of every file under `dir` whose name does not start with `.`, by relative path.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, sha256(&e.path()));
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.is_dir() {
        walk(dir, dir, &mut out);
    }
    out
}

/// Every file `phase.json` lists has the content it lists.
fn phase_complete(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("phase.json")) else { return false };
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files = record["files"].as_object().expect("phase.json lists its files");
    !files.is_empty()
        && files.iter().all(|(name, hash)| {
            dir.join(name).is_file() && Some(sha256(&dir.join(name)).as_str()) == hash.as_str()
        })
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().map(Result::unwrap) {
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Runs `args` on a copy of `start` (a runs folder, or none) killed at write 1, 2, … until it
/// completes; `check` sees the run folder after each kill. Then the command runs again unkilled
/// and `finished` sees the result. Returns the number of write points.
fn kill_everywhere(
    start: Option<&Path>,
    args: &[&str],
    check: impl Fn(usize, &Path),
    finished: impl Fn(usize, &Path),
) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    for n in 1.. {
        let runs: PathBuf = tmp.path().join(n.to_string());
        if let Some(start) = start {
            copy_tree(start, &runs);
        }
        let out = rfa(&runs, args, Some(n));
        if !killed(&out) {
            assert!(n > 3, "only {} write points", n - 1);
            eprintln!("rfa {}: killed at each of {} write points", args.join(" "), n - 1);
            return n - 1;
        }
        check(n, &runs.join("f"));
        ok(&rfa(&runs, args, None));
        finished(n, &runs.join("f"));
        std::fs::remove_dir_all(&runs).unwrap();
    }
    unreachable!()
}

#[test]
fn a_training_killed_at_any_write_resumes_to_the_uninterrupted_model() {
    let tmp = tempfile::tempdir().unwrap();
    // Reference: epoch by epoch, as a resumed run would save it (resume is bit-identical).
    let mut epoch_state = Vec::new();
    let reference = tmp.path().join("ref");
    for epochs in ["train.epochs=1", "train.epochs=2"] {
        ok(&rfa(&reference, &["train", "--set", epochs], None));
        let o = reference.join("f/original");
        epoch_state
            .push((sha256(&o.join("model.safetensors")), sha256(&o.join("optimizer.safetensors"))));
    }
    let uninterrupted = tempfile::tempdir().unwrap();
    ok(&rfa(uninterrupted.path(), &["train"], None));
    let o = uninterrupted.path().join("f/original");
    assert_eq!(
        (sha256(&o.join("model.safetensors")), sha256(&o.join("optimizer.safetensors"))),
        epoch_state[1],
        "training one epoch, then resuming for the second, equals training two at once"
    );
    let points = kill_everywhere(
        None,
        &["train"],
        |n, run| {
            let original = run.join("original");
            if !original.exists() {
                return; // killed before the first epoch's state was switched in
            }
            // A complete epoch's state: model and optimizer of the epoch its log ends at.
            let log: Vec<serde_json::Value> = serde_json::from_str(
                &std::fs::read_to_string(original.join("train_state.json")).unwrap(),
            )
            .unwrap();
            let (model, optim) = &epoch_state[log.len() - 1];
            assert_eq!(&sha256(&original.join("model.safetensors")), model, "kill at {n}");
            assert_eq!(&sha256(&original.join("optimizer.safetensors")), optim, "kill at {n}");
            assert!(
                !original.join("phase.json").exists() || phase_complete(&original),
                "kill at {n}: a phase record that does not match its folder"
            );
        },
        |n, run| {
            let original = run.join("original");
            assert!(phase_complete(&original), "resumed after a kill at {n}");
            assert_eq!(
                sha256(&original.join("model.safetensors")),
                epoch_state[1].0,
                "kill at {n}"
            );
        },
    );
    assert!(points >= 20, "{points} write points");
}

#[test]
fn an_unlearning_killed_at_any_write_keeps_the_earlier_result_or_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let start = tmp.path().join("start");
    ok(&rfa(&start, &["train"], None));
    // The earlier result: another learning rate.
    ok(&rfa(&start, &["unlearn", "--set", "unlearn.lr=1e-4"], None));
    let earlier = tree(&start.join("f/rfa"));
    let reference = tmp.path().join("ref");
    copy_tree(&start, &reference);
    ok(&rfa(&reference, &["unlearn"], None));
    let models = |dir: &Path| {
        let t = tree(dir);
        t.into_iter().filter(|(k, _)| k.ends_with(".safetensors")).collect::<BTreeMap<_, _>>()
    };
    let new = models(&reference.join("f/rfa"));
    assert_ne!(models(&start.join("f/rfa")), new, "the two results must differ");
    kill_everywhere(
        Some(&start),
        &["unlearn"],
        |n, run| {
            let (rfa_dir, aside) = (run.join("rfa"), run.join(".rfa.old"));
            if rfa_dir.exists() {
                let now = tree(&rfa_dir);
                assert!(
                    now == earlier || (models(&rfa_dir) == new && phase_complete(&rfa_dir)),
                    "kill at {n}: rfa/ is neither the earlier result nor the new one complete"
                );
            } else {
                // Between the two renames: the earlier result waits aside, whole.
                assert_eq!(tree(&aside), earlier, "kill at {n}");
            }
            assert!(tree(&run.join("original")) == tree(&start.join("f/original")), "kill at {n}");
        },
        |n, run| {
            assert_eq!(models(&run.join("rfa")), new, "after a kill at {n}");
            assert!(phase_complete(&run.join("rfa")), "after a kill at {n}");
        },
    );
}

#[test]
fn a_report_killed_at_any_write_is_the_earlier_one_or_the_new_one_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let start = tmp.path().join("start");
    for args in [
        &["train"][..],
        &["retrain"],
        &["unlearn"],
        &["eval"],
        &["unlearn", "--method", "grad-ascent"],
    ] {
        ok(&rfa(&start, args, None));
    }
    let earlier = tree(&start.join("f/report"));
    let reference = tmp.path().join("ref");
    copy_tree(&start, &reference);
    ok(&rfa(&reference, &["eval"], None));
    let new = tree(&reference.join("f/report"));
    assert_ne!(earlier, new);
    assert!(
        std::fs::read_to_string(reference.join("f/report/report.md"))
            .unwrap()
            .contains("grad-ascent")
    );
    kill_everywhere(
        Some(&start),
        &["eval"],
        |n, run| {
            let report = run.join("report");
            let now = if report.exists() { tree(&report) } else { tree(&run.join(".report.old")) };
            assert!(now == earlier || now == new, "kill at {n}: a report mixing two evaluations");
        },
        |n, run| assert_eq!(tree(&run.join("report")), new, "after a kill at {n}"),
    );
}
