//! Data-parallel training on two and three CPU replicas (burn's collective all-reduce, threads of
//! this process): the trained model equals a one-device training with the same global batch to
//! float tolerance, for a ViT classifier (uneven shares, a last batch smaller than the replicas)
//! and a GPT-2 language model (shares with different numbers of real tokens); so does RFA's
//! unlearning (its two terms, the extra retain terms, the lead's stop rule); a data-parallel
//! training resumes from its checkpoint as a one-device one does; a replica that fails stops the
//! others, and its error is the one reported.
#![cfg(feature = "collective")]

mod common;

use std::path::Path;

use common::AB;
use common::text::{eli5, gpt2_config};
use lora_core::tensors::TensorFile;
use rfa::Run;
use rfa::config::RunConfig;
use rfa::train::EpochLog;

/// The largest difference between two safetensors files' tensors, relative to the largest
/// weight.
fn max_difference(a: &Path, b: &Path) -> f32 {
    let (a, b) = (TensorFile::open(a).unwrap(), TensorFile::open(b).unwrap());
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>(),
        "the same tensors"
    );
    let (mut diff, mut scale) = (0f32, 0f32);
    for (key, x) in &a.tensors {
        let y = &b.tensors[key];
        assert_eq!(x.shape, y.shape, "{key}");
        if key.ends_with("attention.key.bias") {
            // Softmax ignores what a key bias adds to every score of a query: its gradient is
            // zero in exact arithmetic, so AdamW turns rounding noise into lr-sized steps.
            continue;
        }
        for (p, q) in x.to_f32().iter().zip(y.to_f32()) {
            diff = diff.max((p - q).abs());
            scale = scale.max(p.abs());
        }
    }
    diff / scale
}

fn epochs(run: &Run) -> Vec<EpochLog> {
    let text = std::fs::read_to_string(run.dir.join("original/train_state.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Trains M0 of `cfg` (under `name`) on `replicas` CPU replicas; returns the run.
fn trained(cfg: &RunConfig, name: &str, replicas: usize) -> Run {
    let mut cfg = cfg.clone();
    cfg.name = name.into();
    let run = Run::open(cfg).unwrap();
    run.train_on::<AB>(false, &vec![Default::default(); replicas]).unwrap();
    run
}

/// The tiny GPT-2 run of the text tests with room for every text: no text is cut, so each keeps
/// its own number of tokens.
fn uncut_gpt2_config(runs: &Path, data: &Path) -> RunConfig {
    let mut cfg = gpt2_config("lm", runs, data);
    cfg.data.max_len = 256;
    std::fs::write(
        cfg.model.config.as_ref().unwrap(),
        r#"{"model_type": "gpt2", "vocab_size": 300, "n_positions": 256, "n_embd": 32, "n_layer": 2, "n_head": 2, "eos_token_id": 0}"#,
    )
    .unwrap();
    cfg
}

fn assert_same_training(one: &Run, many: &Run, what: &str) {
    let model = |run: &Run| run.dir.join("original/model.safetensors");
    let d = max_difference(&model(one), &model(many));
    assert!(d < 1e-5, "{what}: weights differ by {d} of the largest weight");
    let (a, b) = (epochs(one), epochs(many));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        approx::assert_relative_eq!(x.loss, y.loss, max_relative = 1e-4);
    }
}

#[test]
fn a_vit_trained_on_two_or_three_replicas_equals_one_device() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = common::tiny("vit", tmp.path(), 2);
    // 200 images in batches of 22: nine shares of 22 rows that split 11/11 and 8/7/7, and a
    // last batch of 2 rows, fewer than three replicas.
    cfg.train.batch_size = 22;
    let one = trained(&cfg, "one", 1);
    assert_eq!(one.sizes().train, 200);
    let two = trained(&cfg, "two", 2);
    assert_same_training(&one, &two, "two replicas");
    let three = trained(&cfg, "three", 3);
    assert_same_training(&one, &three, "three replicas");
}

#[test]
fn a_gpt2_trained_on_two_replicas_equals_one_device() {
    let tmp = tempfile::tempdir().unwrap();
    let data = eli5(tmp.path());
    // Texts of different lengths: each share averages its own number of real next tokens, and
    // weighs in the batch's mean by that number.
    let cfg = uncut_gpt2_config(tmp.path(), &data);
    let one = trained(&cfg, "one", 1);
    let two = trained(&cfg, "two", 2);
    assert_same_training(&one, &two, "two replicas");
}

#[test]
fn a_data_parallel_training_resumes_like_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = common::tiny("resume", tmp.path(), 2);
    let straight = trained(&cfg, "straight", 1);
    // One epoch on two replicas, then the second resumed from its checkpoint on two replicas:
    // the followers start from the lead's restored model and optimizer moments.
    let mut first = cfg.clone();
    first.train.epochs = 1;
    trained(&first, "resumed", 2);
    let resumed = trained(&cfg, "resumed", 2);
    assert_eq!(epochs(&resumed).len(), 2);
    assert_same_training(&straight, &resumed, "resumed on two replicas");
}

#[test]
fn a_failing_replica_stops_the_others_and_its_error_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(common::tiny("fails", tmp.path(), 2)).unwrap();
    let names: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let cfg = rfa_models::VitConfig::new(28, 7, 1, 32, 1, 2, 64, &names);
    let model = rfa::model_init::Vit::<AB>::init(&cfg, 0, &Default::default()).unwrap();
    // The lead cannot save its first epoch: the followers, already past the epoch's steps,
    // must not wait for it forever.
    let ckpt = rfa::checkpoint::Checkpoints {
        dir: &tmp.path().join("c"),
        resume: false,
        extras: &|dir: &Path| anyhow::bail!("no space left writing {}", dir.display()),
    };
    let err = rfa::train::train_model(
        model,
        &run.images().unwrap().train,
        &(0..40).collect::<Vec<_>>(),
        &run.cfg.train,
        0,
        "train",
        &ckpt,
        &[Default::default(), Default::default()],
    )
    .err()
    .unwrap();
    let e = format!("{err:#}");
    assert!(e.contains("no space left"), "{e}");
    assert!(!tmp.path().join("c").exists(), "nothing was switched in");
}

#[test]
fn the_command_line_trains_on_two_replicas() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = common::tiny_args("cli", tmp.path(), "class:1");
    args.extend(["--devices", "2"].map(String::from));
    let a: Vec<&str> = std::iter::once("train").chain(args.iter().map(String::as_str)).collect();
    common::stdout_or_panic(common::rfa_cli(&a));
    let phase = std::fs::read_to_string(tmp.path().join("cli/original/phase.json")).unwrap();
    assert!(phase.contains("data-parallel over cpu,cpu"), "{phase}");
    let e = common::stderr_of_failure(common::rfa_cli(&[
        "train",
        "--device",
        "cpu,cpu",
        "--devices",
        "2",
    ]));
    assert!(e.contains("not both"), "{e}");
}

/// One RFA unlearning of a test: a copy of its adapter file and what its log says.
struct Unlearned {
    adapter: std::path::PathBuf,
    /// The total loss of every step.
    losses: Vec<f64>,
    kept: Option<usize>,
    /// The forget weight's multiple before each check (`unlearn.balance`).
    lambda_scales: Vec<Option<f64>>,
}

/// Unlearns `run`'s M0 with RFA on `replicas` CPU replicas.
fn unlearned(run: &Run, replicas: usize, keep: &Path) -> Unlearned {
    run.unlearn_on::<AB>(&vec![Default::default(); replicas]).unwrap();
    let adapter = keep.join(format!("adapter-{replicas}.safetensors"));
    std::fs::copy(run.dir.join("rfa/adapter/adapter_model.safetensors"), &adapter).unwrap();
    let log = common::unlearn_log(run, "rfa");
    Unlearned {
        adapter,
        losses: log.steps.iter().map(|s| s.total).collect(),
        kept: log.stop.as_ref().map(|s| s.kept_step),
        lambda_scales: log.stop.iter().flat_map(|s| &s.checks).map(|c| c.lambda_scale).collect(),
    }
}

/// Unlearns on one device and on each of `replica_counts`; asserts they agree. Returns the
/// one-device unlearning.
fn assert_same_unlearning(run: &Run, tmp: &Path, replica_counts: &[usize]) -> Unlearned {
    let one = unlearned(run, 1, tmp);
    assert!(one.losses.len() > 1, "{:?}", one.losses);
    for &n in replica_counts {
        let many = unlearned(run, n, tmp);
        let d = max_difference(&one.adapter, &many.adapter);
        assert!(d < 1e-4, "{n} replicas: adapters differ by {d} of the largest weight");
        assert_eq!(one.losses.len(), many.losses.len(), "{n} replicas: the same steps");
        for (a, b) in one.losses.iter().zip(&many.losses) {
            approx::assert_relative_eq!(*a, *b, max_relative = 1e-4);
        }
        assert_eq!(one.kept, many.kept, "{n} replicas: the stop rule kept the same step");
        assert_eq!(one.lambda_scales, many.lambda_scales, "{n} replicas: the same λ steering");
    }
    one
}

#[test]
fn rfa_unlearning_on_two_or_three_replicas_equals_one_device() {
    let tmp = tempfile::tempdir().unwrap();
    // Two epochs: M0 predicts the class for some of Df.
    let mut cfg = common::tiny("vit", tmp.path(), 2);
    // Both extra retain terms, and forget batches of 6 that split 3/3 and 2/2/2; the fourth
    // has the last 2 of Df's 20 images, fewer than three replicas.
    cfg.unlearn.retain_task_weight = Some(0.5);
    cfg.unlearn.retain_cls_weight = 0.5;
    cfg.unlearn.batch_size = 6;
    cfg.unlearn.epochs = 2;
    // A guard this tiny model's adapters stay within: the stop rule stops once the class is
    // forgotten, and the lead tells the others; until then every check doubles λ (the
    // class-wise adaptive balance), and the lead's λ reaches the others.
    cfg.unlearn.max_retain_drop = 100.0;
    cfg.unlearn.check_every = 1;
    cfg.unlearn.forget_tolerance = 0.0;
    cfg.unlearn.lr = 2e-4;
    let run = Run::open(cfg).unwrap();
    assert_eq!(run.sizes().forget, 20);
    run.train::<AB>(false, &Default::default()).unwrap();
    let one = assert_same_unlearning(&run, tmp.path(), &[2, 3]);
    assert!(one.lambda_scales.contains(&Some(2.0)), "λ moved: {:?}", one.lambda_scales);
    // Past the 2-row batch, before the budget's end: the stop rule stopped all replicas.
    assert!((4..8).contains(&one.losses.len()), "{:?}", one.losses);
}

#[test]
fn rfa_unlearning_of_a_language_model_on_two_replicas_equals_one_device() {
    let tmp = tempfile::tempdir().unwrap();
    let data = eli5(tmp.path());
    let mut cfg = uncut_gpt2_config(tmp.path(), &data);
    cfg.train.epochs = 1;
    cfg.unlearn.epochs = 2;
    let run = Run::open(cfg).unwrap();
    run.train::<AB>(false, &Default::default()).unwrap();
    assert_same_unlearning(&run, tmp.path(), &[2]);
}
