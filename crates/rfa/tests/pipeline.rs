//! End-to-end: the `rfa` command and the library on a small slice of the embedded real data.

use std::path::Path;
use std::process::Command;

use rfa::Run;
use rfa::config::RunConfig;

mod common;

use common::{AB, unlearn_log};

fn tiny(name: &str, runs: &Path) -> RunConfig {
    common::tiny(name, runs, 2)
}

#[test]
fn the_command_runs_the_whole_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    // From another working directory: the demo's data are compiled into the binary.
    let out = Command::new(env!("CARGO_BIN_EXE_rfa"))
        .current_dir(tmp.path())
        .args(["demo", "--name", "cli", "--runs-dir"])
        .arg(tmp.path())
        .args([
            "--set",
            "data.max_train=200",
            "--set",
            "data.max_test=100",
            "--set",
            "train.epochs=1",
            "--set",
            "unlearn.epochs=1",
            // Several unlearning steps over the ~20 forgotten images (their times are checked).
            "--set",
            "unlearn.batch_size=8",
            "--forget",
            "class:Trouser",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| RFA |") && stdout.contains("| retrain (M*) |"), "{stdout}");
    // The report says which settings the class-wise scenario chose and why RFA stopped.
    assert!(
        stdout.contains("RFA: target `class-mean-nearest`, retain sampling `confusable`")
            && stdout.contains("stop rule `probe`: stopped after step"),
        "{stdout}"
    );
    let dir = tmp.path().join("cli");
    let report = std::fs::read_to_string(dir.join("report/report.json")).unwrap();
    assert!(
        report.contains("<embedded>/data/fashion-mnist-subset/train-images-idx3-ubyte.gz"),
        "{report}"
    );
    for f in [
        "config.toml",
        "report/report.json",
        "report/report.md",
        "report/comparison.md",
        "original/model.safetensors",
        "original/optimizer.safetensors",
        "retrain/config.json",
        "rfa/adapter/adapter_model.safetensors",
        "rfa/adapter/adapter_config.json",
        "rfa/merged/model.safetensors",
        "report/plots/per_class_accuracy.png",
        "report/plots/residual_norms.png",
        "report/plots/loss_training.png",
        "report/plots/loss_unlearning.png",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(cfg.contains("forget = \"class:Trouser\"") && cfg.contains("max_train = 200"), "{cfg}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report/report.json")).unwrap())
            .unwrap();
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    for m in models {
        for k in ["ua", "ra", "ta", "mia_efficacy"] {
            let v = m[k].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&v), "{k} = {v}");
        }
    }
    // The retrained model never saw the class: it cannot be recognised.
    assert!(models[1]["ua"].as_f64().unwrap() > 99.0, "{}", models[1]);
    // Each phase's time comes with the backend and precision it ran on.
    for m in models {
        assert_eq!(m["ran_on"].as_str(), Some("cpu (burn ndarray, f32)"), "{m}");
    }
    assert!(
        stdout
            .contains("Phases ran on — original (M0): cpu (burn ndarray, f32); retrain (M*): cpu"),
        "{stdout}"
    );
    // The unlearning's first step apart from the others, in the JSON and in the report; trained
    // models have none, and the CPU backends no device memory.
    let rfa = &models[2];
    let (first, median) =
        (rfa["first_step_seconds"].as_f64().unwrap(), rfa["median_step_seconds"].as_f64().unwrap());
    assert!(first > 0.0 && median > 0.0, "{rfa}");
    assert!(
        models[0].get("first_step_seconds").is_none()
            && models.iter().all(|m| m.get("peak_device_mib").is_none()),
        "{models:?}"
    );
    let md = std::fs::read_to_string(dir.join("report/report.md")).unwrap();
    assert!(md.contains(&format!("— RFA {first:.3} s, then {median:.3} s.")), "{md}");
    assert!(!md.contains("Peak device memory"), "{md}");
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("rfa/unlearn_log.json")).unwrap())
            .unwrap();
    let steps = log["steps"].as_array().unwrap();
    assert!(steps.len() > 1 && steps.iter().all(|s| s["seconds"].as_f64().unwrap() > 0.0), "{log}");

    // export copies both artefacts.
    let exp = tmp.path().join("exported");
    let st = Command::new(env!("CARGO_BIN_EXE_rfa"))
        .args(["export", "--name", "cli", "--runs-dir"])
        .arg(tmp.path())
        .arg("--out")
        .arg(&exp)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert!(
        exp.join("adapter/adapter_config.json").is_file()
            && exp.join("merged/config.json").is_file()
    );
}

/// `--dtype bf16` is refused where it cannot apply, before anything runs: on CPU (no bf16
/// tensors), for training (every weight updated), with full-weight baselines, and unknown types.
#[test]
fn bf16_is_refused_where_it_cannot_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let rfa = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rfa"))
            .args(args)
            .arg("--runs-dir")
            .arg(tmp.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(rfa(&["train", "--dtype", "bf16"]).contains("training M0 and M* updates every weight"));
    assert!(
        rfa(&["unlearn", "--dtype", "bf16"]).contains("needs --device cuda, tch-cpu or tch-cuda")
    );
    assert!(
        rfa(&["unlearn", "--dtype", "bf16", "--set", "unlearn.adapter=\"full\""])
            .contains("needs adapters")
    );
    assert!(
        rfa(&["unlearn", "--dtype", "f16"]).contains("unknown unlearn.dtype `f16` (f32, bf16)")
    );
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none(), "nothing may be written");
}

#[test]
fn merged_model_equals_base_plus_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tiny("merge", tmp.path())).unwrap();
    let dev = Default::default();
    run.train::<AB>(false, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    type I = burn::backend::NdArray<f32>;
    let mut with_adapter =
        rfa::model_init::Vit::<I>::load(&run.dir.join("original"), &dev).unwrap();
    lora_core::load_adapter(&mut with_adapter, &run.dir.join("rfa/adapter")).unwrap();
    let merged = rfa::model_init::Vit::<I>::load(&run.dir.join("rfa/merged"), &dev).unwrap();
    let idx: Vec<usize> = (0..20).collect();
    let a = rfa::engine::outputs(&with_adapter, &run.images().unwrap().test, &idx, &dev).unwrap();
    let b = rfa::engine::outputs(&merged, &run.images().unwrap().test, &idx, &dev).unwrap();
    let err = a.logits.iter().zip(&b.logits).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-4, "{err}");
    assert!(a.residual_norms.iter().any(|&r| r > 0.0), "the adapter must have moved");
}

#[test]
fn training_resumes_after_an_interruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let mut cfg = tiny("resume", tmp.path());
    cfg.train.epochs = 1;
    Run::open(cfg.clone()).unwrap().train::<AB>(false, &dev).unwrap();
    let state = tmp.path().join("resume/original/train_state.json");
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    cfg.train.epochs = 2;
    Run::open(cfg).unwrap().train::<AB>(false, &dev).unwrap();
    let both: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(both.as_array().unwrap().len(), 2);
    assert_eq!(both[0], first[0], "epoch 1 was not redone");
}

#[test]
fn a_diverging_loss_stops_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny("nan", tmp.path());
    cfg.train.lr = 1e30;
    cfg.train.epochs = 3;
    let err =
        Run::open(cfg).unwrap().train::<AB>(false, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("the loss became"), "{err}");
    assert!(err.contains("lower the learning rate") || err.contains("original"), "{err}");
}

#[test]
fn bad_configurations_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny("bad", tmp.path());
    c.data.dataset = "imagenet".into();
    assert!(Run::open(c).err().unwrap().to_string().contains("unknown dataset"));
    let mut c = tiny("bad", tmp.path());
    c.data.forget = "class:Unicorn".into();
    assert!(Run::open(c).err().unwrap().to_string().contains("unknown class `Unicorn`"));
    let mut c = tiny("bad", tmp.path());
    c.data.path = tmp.path().join("nowhere");
    assert!(Run::open(c).err().unwrap().to_string().contains("nowhere"));
    let c = tiny("bad", tmp.path());
    let run = Run::open(c).unwrap();
    let e = run.unlearn::<AB>(&Default::default()).unwrap_err();
    assert!(format!("{e:#}").contains("run `rfa train` first"), "{e:#}");
    let e = run.eval::<AB>("cpu", &Default::default()).unwrap_err();
    assert!(format!("{e:#}").contains("original"), "{e:#}");
    let toml = tmp.path().join("run.toml");
    std::fs::write(&toml, "name = \"x\"\n[data]\ndataset = \"fashion-mnist\"\n").unwrap();
    assert!(RunConfig::read(&toml).unwrap_err().to_string().contains("run.toml"));
}

#[test]
fn a_model_whose_classes_differ_from_the_data_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tiny("classes", tmp.path())).unwrap();
    let names: Vec<String> = (0..3).map(|i| i.to_string()).collect();
    let cfg = rfa_models::VitConfig::new(28, 7, 1, 32, 1, 2, 64, &names);
    let model = rfa::model_init::Vit::<AB>::init(&cfg, 0, &Default::default()).unwrap();
    let ckpt = rfa::checkpoint::Checkpoints {
        dir: &tmp.path().join("c"),
        resume: false,
        extras: &|_: &Path| Ok(()),
    };
    let err = rfa::train::train_model(
        model,
        &run.images().unwrap().train,
        &[0, 1],
        &run.cfg.train,
        0,
        "train",
        &ckpt,
        &[Default::default()],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("3 classes") && err.contains("10"), "{err}");
}

#[test]
fn any_vit_config_json_trains_from_scratch_on_resized_grey_images() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny("config", tmp.path());
    // 32² RGB, patch 4, 10 labels: the Fashion-MNIST images are resized and repeated over channels.
    cfg.model.config = Some(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/hf-parity/vit/model/config.json"),
    );
    cfg.train.epochs = 1;
    let run = Run::open(cfg).unwrap();
    run.train::<AB>(false, &Default::default()).unwrap();
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.dir.join("original/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["image_size"], 32);
    assert_eq!(saved["id2label"]["1"], "Trouser");
}

#[test]
fn unlearning_is_reproducible_from_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tiny("repro", tmp.path())).unwrap();
    let dev = Default::default();
    run.train::<AB>(false, &dev).unwrap();
    let adapter = || std::fs::read(run.dir.join("rfa/adapter/adapter_model.safetensors")).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let first = adapter();
    run.unlearn::<AB>(&dev).unwrap();
    assert_eq!(first, adapter(), "the same config and seed give the same adapter");
}

#[test]
fn the_targets_can_be_estimated_from_a_sample_of_the_retain_set() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let mut cfg = tiny("stats", tmp.path());
    let run = Run::open(cfg.clone()).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let all = unlearn_log(&run, "rfa");
    assert_eq!(all.stats_samples, run.images().unwrap().split.retain.len());
    cfg.unlearn.stats_samples = 50;
    let run = Run::open(cfg).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let part = unlearn_log(&run, "rfa");
    assert_eq!(part.stats_samples, 50);
    // Other targets, so another first forget loss; the retain term starts at 0 either way.
    assert_ne!(part.steps[0].forget, all.steps[0].forget);
    assert_eq!(part.steps[0].retain, 0.0);
}

/// `unlearn.retain_cls_weight = w` adds w · (mean squared CLS residual of the retain batch) to
/// the loss: nothing at the first step (B = 0, no residual), something afterwards, and nothing
/// at all with w = 0 (the method document's loss).
#[test]
fn the_cls_retain_term_enters_the_loss_only_when_weighted() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let mut cfg = tiny("cls-retain", tmp.path());
    cfg.unlearn.epochs = 3; // the tiny forget set is one batch: three steps
    cfg.unlearn.retain_task_weight = Some(0.0);
    cfg.unlearn.stop = rfa::scenario::Auto::Set(rfa::scenario::StopRule::Epochs);
    let lambda = cfg.unlearn.lambda;
    let run = Run::open(cfg.clone()).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    // total − (retain + λ·forget) per step.
    let extra = |run: &Run| -> Vec<f64> {
        unlearn_log(run, "rfa")
            .steps
            .iter()
            .map(|s| s.total - (s.retain + lambda * s.forget))
            .collect()
    };
    run.unlearn::<AB>(&dev).unwrap();
    let plain = extra(&run);
    assert!(plain.len() > 2 && plain.iter().all(|x| x.abs() < 1e-4), "{plain:?}");
    cfg.unlearn.retain_cls_weight = 100.0;
    let run = Run::open(cfg).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let weighted = extra(&run);
    assert!(weighted[0].abs() < 1e-6, "{weighted:?}");
    assert!(weighted[1..].iter().all(|&x| x > 1e-6), "{weighted:?}");
}

/// `unlearn.retain_task_weight = γ > 0` adds γ · (the task loss on the retain batch) — the pass
/// then runs to the logits instead of ending at the last adapted layer: a positive cross-entropy
/// from the first step on.
#[test]
fn the_task_term_enters_the_loss_only_when_weighted() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let mut cfg = tiny("task-retain", tmp.path());
    cfg.unlearn.epochs = 2;
    cfg.unlearn.retain_task_weight = Some(0.5);
    let lambda = cfg.unlearn.lambda;
    let run = Run::open(cfg).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let extra: Vec<f64> = unlearn_log(&run, "rfa")
        .steps
        .iter()
        .map(|s| s.total - (s.retain + lambda * s.forget))
        .collect();
    assert!(!extra.is_empty() && extra.iter().all(|&x| x > 1e-3 && x.is_finite()), "{extra:?}");
}

/// The whole configuration is checked before any work, naming the field; a run name cannot
/// leave the runs folder; a failed command leaves `config.toml` as the last good phase wrote it.
#[test]
fn configurations_are_checked_first_and_failures_keep_the_recorded_config() {
    let tmp = tempfile::tempdir().unwrap();
    for (edit, field) in [
        ((|c: &mut RunConfig| c.name = "../outside".into()) as fn(&mut RunConfig), "name"),
        (|c: &mut RunConfig| c.name = String::new(), "name"),
        (|c: &mut RunConfig| c.unlearn.lr = f64::NAN, "unlearn.lr"),
        (|c: &mut RunConfig| c.unlearn.lambda = f64::INFINITY, "unlearn.lambda"),
        (|c: &mut RunConfig| c.unlearn.batch_size = 0, "unlearn.batch_size"),
        (|c: &mut RunConfig| c.unlearn.rank = 0, "unlearn.rank"),
        (|c: &mut RunConfig| c.unlearn.alpha = -1.0, "unlearn.alpha"),
        (|c: &mut RunConfig| c.train.epochs = 0, "train.epochs"),
        (|c: &mut RunConfig| c.unlearn.confusable_share = 1.5, "unlearn.confusable_share"),
        (|c: &mut RunConfig| c.unlearn.forget_tolerance = -1.0, "unlearn.forget_tolerance"),
        (|c: &mut RunConfig| c.unlearn.max_retain_drop = f64::NAN, "unlearn.max_retain_drop"),
        (
            |c: &mut RunConfig| c.unlearn.retain_task_weight = Some(-1.0),
            "unlearn.retain_task_weight",
        ),
        (|c: &mut RunConfig| c.unlearn.probe_samples = 0, "unlearn.probe_samples"),
        (
            |c: &mut RunConfig| c.data.probe_percent = rfa::scenario::Auto::Set(100.0),
            "data.probe_percent",
        ),
    ] {
        let mut c = tiny("checked", tmp.path());
        edit(&mut c);
        let e = Run::open(c).err().expect("refused").to_string();
        assert!(e.starts_with(field), "{field}: {e}");
    }
    assert!(!tmp.path().join("outside").exists() && !tmp.path().join("checked").exists());

    let c = tiny("kept", tmp.path());
    let run = Run::open(c.clone()).unwrap();
    // Unlearning before training fails: no configuration is recorded.
    assert!(run.unlearn::<AB>(&Default::default()).is_err());
    assert!(!run.dir.join("config.toml").exists());
    run.train::<AB>(false, &Default::default()).unwrap();
    let recorded = std::fs::read_to_string(run.dir.join("config.toml")).unwrap();
    assert_eq!(recorded, c.to_toml());
    // A later command with another configuration that fails leaves the record alone.
    let mut other = c.clone();
    other.unlearn.method = rfa::Method::RandomLabel;
    other.unlearn.adapter = "full".into();
    other.unlearn.dtype = "bf16".into();
    let failing = Run::open(other).unwrap();
    assert!(failing.unlearn::<AB>(&Default::default()).is_err());
    assert_eq!(std::fs::read_to_string(run.dir.join("config.toml")).unwrap(), recorded);
}

/// An unlearning that diverges (lr = 1e30) fails with an error and leaves the earlier good
/// result of that method as it was: nothing non-finite is written, nothing good deleted.
#[test]
fn a_diverged_unlearning_never_replaces_a_good_result() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let c = tiny("diverge", tmp.path());
    let run = Run::open(c.clone()).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let adapter = run.dir.join("rfa/adapter/adapter_model.safetensors");
    let merged = run.dir.join("rfa/merged/model.safetensors");
    let (good_adapter, good_merged) =
        (std::fs::read(&adapter).unwrap(), std::fs::read(&merged).unwrap());
    let mut wild = c.clone();
    wild.unlearn.lr = 1e30;
    // Several steps: after the first, the adapters' product overflows.
    wild.unlearn.batch_size = 4;
    let e = Run::open(wild).unwrap().unlearn::<AB>(&dev).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("lr") || e.contains("non-finite"), "{e}");
    assert_eq!(std::fs::read(&adapter).unwrap(), good_adapter);
    assert_eq!(std::fs::read(&merged).unwrap(), good_merged);
    let left: Vec<String> = std::fs::read_dir(&run.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && !n.starts_with(".lock"))
        .collect();
    assert!(left.is_empty(), "staging folders left behind: {left:?}");
}

/// A command that writes into a run folder another command is writing is refused, naming the
/// holder; nothing is written.
#[test]
fn a_second_writer_of_a_run_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tiny("locked", tmp.path())).unwrap();
    let held = rfa::RunLock::exclusive(&run.dir, "rfa train").unwrap();
    for e in [
        run.train::<AB>(false, &Default::default()).unwrap_err(),
        run.unlearn::<AB>(&Default::default()).unwrap_err(),
        run.eval::<AB>("cpu", &Default::default()).unwrap_err(),
    ] {
        let e = format!("{e:#}");
        assert!(e.contains("in use by") && e.contains("(rfa train)"), "{e}");
    }
    assert!(!run.dir.join("original").exists());
    drop(held);
    run.train::<AB>(false, &Default::default()).unwrap();
}

/// A phase is resumed, and a model reused, only under the configuration and the samples it was
/// made from: retraining for another class, evaluating against an M* of another forget set or
/// unlearning from an M0 of another training set is refused, naming the field; --force starts
/// the phase over.
#[test]
fn a_model_made_under_another_configuration_is_neither_resumed_nor_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let c = tiny("fingerprint", tmp.path());
    let run = Run::open(c.clone()).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    run.train::<AB>(true, &dev).unwrap();

    let mut other_class = c.clone();
    other_class.data.forget = "class:Sandal".into();
    let other = Run::open(other_class.clone()).unwrap();
    let e = format!("{:#}", other.train::<AB>(true, &dev).unwrap_err());
    assert!(
        e.contains("data.forget = \"class:1\"")
            && e.contains("\"class:Sandal\"")
            && e.contains("--force"),
        "{e}"
    );
    // M0 does not depend on the forget set: unlearning another class starts from it.
    other.unlearn::<AB>(&dev).unwrap();
    // The report would compare with an M* that still holds the class: refused.
    let e = format!("{:#}", other.eval::<AB>("cpu", &dev).unwrap_err());
    assert!(e.contains("retrain") && e.contains("data.forget"), "{e}");
    let mut forced = Run::open(other_class).unwrap();
    forced.force = true;
    forced.train::<AB>(true, &dev).unwrap();
    forced.eval::<AB>("cpu", &dev).unwrap();

    let mut fewer = c.clone();
    fewer.data.max_train = 150;
    let e = format!("{:#}", Run::open(fewer).unwrap().unlearn::<AB>(&dev).unwrap_err());
    assert!(
        e.contains("original")
            && e.contains("data.max_train = 200")
            && e.contains("rfa train --force"),
        "{e}"
    );
}

/// An unlearning result records the original model it was made from; once original/ changes
/// (here: trained one epoch further), the report refuses to pair the old adapter with it.
#[test]
fn an_adapter_is_only_applied_to_the_model_it_was_trained_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let c = tiny("base-hash", tmp.path());
    let run = Run::open(c.clone()).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    run.train::<AB>(true, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let report = run.eval::<AB>("cpu", &dev).unwrap();
    assert!(report.models[2].record.base_model_sha256.is_some());
    let mut longer = c.clone();
    longer.train.epochs += 1;
    Run::open(longer.clone()).unwrap().train::<AB>(false, &dev).unwrap();
    let e = format!("{:#}", Run::open(longer).unwrap().eval::<AB>("cpu", &dev).unwrap_err());
    assert!(e.contains("another original model") && e.contains("rfa"), "{e}");
}

/// `rfa demo` checks what unlearning needs of the model before training anything: targets that
/// select no layer, or layer weights of the wrong length, fail in seconds and leave no model.
#[test]
fn the_demo_checks_the_unlearning_targets_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    for (sets, expected) in [
        (&["unlearn.targets=no_such_layer"][..], "unlearn.targets = \"no_such_layer\""),
        (&["unlearn.layer_weights=[1.0, 2.0]"], "unlearn.layer_weights has 2 weights"),
        (&["unlearn.stop=\"epochs\"", "unlearn.balance=\"adaptive\""], "nothing would steer λ"),
    ] {
        let set = sets.join(" ");
        let out = Command::new(env!("CARGO_BIN_EXE_rfa"))
            .args(["demo", "--name", "targets", "--runs-dir"])
            .arg(tmp.path())
            .args(sets.iter().flat_map(|s| ["--set", s]))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{set}: {stderr}");
        assert!(!tmp.path().join("targets/original").exists(), "{set}: trained before failing");
    }
}

/// The probe stop rule on a learning rate that destroys the model: the retain guard trips, the
/// run stops or spends its budget, and the adapter kept is the best one measured within the
/// guard — here M0's (step 0), so the merged model predicts what M0 predicts.
#[test]
fn the_stop_rule_rolls_back_when_the_retain_guard_trips() {
    use rfa::probe::StopReason;
    use rfa::scenario::{Auto, StopRule};
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let mut cfg = tiny("guard", tmp.path());
    cfg.unlearn.epochs = 6;
    cfg.unlearn.lr = 0.5;
    cfg.unlearn.stop = Auto::Set(StopRule::Probe);
    cfg.unlearn.check_every = 1;
    let run = Run::open(cfg).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let log = unlearn_log(&run, "rfa");
    let stop = log.stop.expect("the probe stop rule ran");
    let last = stop.checks.last().unwrap();
    assert!(!last.retain_held, "the lr destroys the model: {:?}", stop.checks);
    assert!(
        matches!(stop.reason, StopReason::RetainGuard | StopReason::Budget),
        "{:?}",
        stop.reason
    );
    assert!(stop.kept_step < stop.stopped_after_step, "rolled back: {stop:?}");
    let kept = stop.checks.iter().find(|c| c.step == stop.kept_step).unwrap();
    assert!(kept.retain_held);
    // The kept adapter is the one measured at that step: the merged model scores as it did.
    let t = run.images().unwrap();
    let merged = rfa_models::VitForImageClassification::<burn::backend::NdArray<f32>>::load(
        &run.dir.join("rfa/merged"),
        &dev,
    )
    .unwrap();
    let probes = rfa::probe::Probes::draw(t, run.cfg.unlearn.probe_samples, 0);
    let criterion = rfa::probe::Criterion::new(&run.cfg.unlearn, t.split.class, &probes);
    let again = rfa::probe::measure(&merged, t, &probes, &criterion, None, 0, &dev).unwrap();
    approx::assert_abs_diff_eq!(again.retain_accuracy, kept.retain_accuracy, epsilon = 1e-9);
    approx::assert_abs_diff_eq!(
        again.validation_accuracy,
        kept.validation_accuracy,
        epsilon = 1e-9
    );
}

/// The adaptive balance (class-wise default): every check sets the forget weight of the steps
/// after it as `Balance::next_scale` says, and each step's loss is retain + λ · scale · forget.
#[test]
fn the_adaptive_balance_steers_the_forget_weight_of_every_step() {
    use rfa::balance::Balance;
    use rfa::scenario::{Auto, StopRule};
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let mut cfg = tiny("balance", tmp.path());
    cfg.unlearn.epochs = 3;
    cfg.unlearn.batch_size = 4;
    cfg.unlearn.check_every = 1;
    // The logged total is then the retain and forget terms alone.
    cfg.unlearn.retain_task_weight = Some(0.0);
    cfg.unlearn.stop = Auto::Set(StopRule::Probe);
    // Steps too small to forget anything: the weight rises while the retain accuracy holds.
    cfg.unlearn.forget_tolerance = 0.0;
    cfg.unlearn.lr = 1e-6;
    let run = Run::open(cfg).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let log = unlearn_log(&run, "rfa");
    assert_eq!(log.settings.unwrap().balance, Balance::Adaptive);
    let checks = log.stop.expect("the probe stop rule ran").checks;
    let mut scale = 1.0;
    for c in &checks {
        assert_eq!(c.lambda_scale, Some(scale), "check at step {}", c.step);
        scale = Balance::Adaptive.next_scale(scale, c);
    }
    assert!(checks.iter().any(|c| c.lambda_scale != Some(1.0)), "λ never moved: {checks:?}");
    let lambda = run.cfg.unlearn.lambda;
    for s in &log.steps {
        // Step s (from 0) is measured by the check after s + 1 steps.
        let c = checks.iter().find(|c| c.step == s.step + 1).expect("a check after every step");
        let expected = s.retain + lambda * c.lambda_scale.unwrap() * s.forget;
        approx::assert_relative_eq!(s.total, expected, max_relative = 1e-5);
    }
}
