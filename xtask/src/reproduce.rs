//! `cargo xtask reproduce TASK [--small]`: the method comparison of docs/RESULTS.md.
//!
//! For each scenario of the task: trains the original and the gold standard (or reuses them:
//! training resumes from the run folder), runs every method with each seed (results already in
//! the run folder are reused), evaluates them all in one report, and writes
//! `docs/results/reproduce/<scenario>/` (report, configuration, summary, gap-vs-time plot) and
//! the scenario's section of docs/RESULTS.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use rfa::config::RunConfig;
use rfa::report::Report;

/// Per-method settings on top of the task's configuration. Not tuned per task: every baseline
/// trains the same LoRA adapters as RFA with AdamW; methods that pass over the whole retain set
/// get one epoch (their cost grows with |Dr|), ascent gets a smaller step because its loss is
/// unbounded.
const METHOD_SETS: [(&str, &[&str]); 9] = [
    ("rfa", &[]),
    ("finetune", &["unlearn.lr=1e-3", "unlearn.epochs=1"]),
    ("grad-ascent", &["unlearn.lr=1e-4"]),
    ("random-label", &["unlearn.lr=1e-3"]),
    ("grad-diff", &["unlearn.lr=1e-3"]),
    ("scrub", &["unlearn.lr=1e-3"]),
    ("l1-sparse", &["unlearn.lr=1e-3", "unlearn.epochs=1"]),
    ("salun", &["unlearn.lr=1e-3"]),
    ("npo", &["unlearn.lr=1e-3"]),
];

/// Methods that need class labels (not for language models).
const LABEL_METHODS: [&str; 2] = ["random-label", "salun"];

struct Scenario {
    name: String,
    config: RunConfig,
    language_model: bool,
}

fn read(root: &Path, rel: &str) -> Result<RunConfig> {
    RunConfig::read(&root.join(rel))
}

fn scenarios(root: &Path, task: &str, small: bool) -> Result<Vec<Scenario>> {
    let mut out = Vec::new();
    let mut add = |name: &str, mut c: RunConfig, forget: &str, lm: bool| {
        c.name = format!("{name}{}", if small { "-small" } else { "" });
        c.data.forget = forget.into();
        out.push(Scenario { name: c.name.clone(), config: c, language_model: lm });
    };
    match task {
        "fashion-mnist" => {
            let mut c = RunConfig::demo();
            if !small {
                c.data.path = "~/.cache/rfa-assets/fashion-mnist".into();
            }
            add("fashion-mnist-class1", c.clone(), "class:1", false);
            add("fashion-mnist-random10", c, "random:10", false);
        }
        "cifar10" => {
            let mut c = RunConfig::demo();
            c.data.dataset = "image-folder".into();
            c.data.path = "~/.cache/rfa-assets/cifar10".into();
            c.model.preset = "vit-small".into();
            c.train.epochs = 10;
            c.train.lr = 1e-3;
            c.train.batch_size = 128;
            if small {
                c.data.max_train = 2000;
                c.data.max_test = 500;
                c.train.epochs = 5;
            }
            add("cifar10-class0", c.clone(), "class:airplane", false);
            add("cifar10-random10", c, "random:10", false);
        }
        "imdb" => {
            let mut c = read(root, "configs/imdb-minilm.toml")?;
            if small {
                c.data.max_train = 200;
                c.data.max_test = 100;
                c.data.max_len = 64;
            }
            add("imdb-random10", c.clone(), "random:10", false);
            if !small {
                add("imdb-random5", c, "random:5", false);
            }
        }
        "eli5" => {
            let mut c = read(root, "configs/eli5-gpt2.toml")?;
            if small {
                c.data.per_category = 30;
                c.data.max_len = 64;
            }
            add("eli5-mathematics", c, "class:Mathematics", true);
        }
        other => bail!("unknown task `{other}` (fashion-mnist, cifar10, imdb, eli5)"),
    }
    Ok(out)
}

fn rfa_binary(root: &Path, device: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(["build", "--release", "-p", "rfa"]);
    if device.starts_with("cuda") {
        cmd.args(["--features", "cuda"]);
    }
    if !cmd.status()?.success() {
        bail!("building the rfa binary failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    Ok(target.join("release/rfa"))
}

fn rfa(bin: &Path, args: &[&str], config: &Path, runs: &Path, device: &str, sets: &[String]) -> Result<()> {
    let mut cmd = Command::new(bin);
    cmd.args(args).arg("--config").arg(config).arg("--runs-dir").arg(runs).args(["--device", device]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    eprintln!("+ rfa {} {}", args.join(" "), sets.join(" "));
    if !cmd.status().with_context(|| format!("running {}", bin.display()))?.success() {
        bail!("`rfa {}` failed", args.join(" "));
    }
    Ok(())
}

pub fn run(task: &str, small: bool, seeds: usize, only: &[String], runs: &Path, device: &str) -> Result<()> {
    let root = crate::root();
    let bin = rfa_binary(&root, device)?;
    std::fs::create_dir_all(runs)?;
    for sc in scenarios(&root, task, small)? {
        let config = runs.join(format!("{}.toml", sc.name));
        std::fs::write(&config, sc.config.to_toml())?;
        let dir = {
            let mut c = sc.config.clone();
            c.runs_dir = runs.to_path_buf();
            c.expand_home();
            c.run_dir()
        };
        let started = std::time::Instant::now();
        rfa(&bin, &["train"], &config, runs, device, &[])?;
        rfa(&bin, &["retrain"], &config, runs, device, &[])?;
        for (method, sets) in METHOD_SETS {
            if (sc.language_model && LABEL_METHODS.contains(&method)) || (!only.is_empty() && !only.iter().any(|m| m == method)) {
                continue;
            }
            for seed in 0..seeds as u64 {
                if dir.join(format!("{method}-s{seed}/phase.json")).is_file() {
                    continue;
                }
                let mut s: Vec<String> = sets.iter().map(|x| x.to_string()).collect();
                s.push(format!("unlearn.seed={seed}"));
                rfa(&bin, &["unlearn", "--method", method], &config, runs, device, &s)?;
            }
        }
        rfa(&bin, &["eval"], &config, runs, device, &[])?;
        let report: Report = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json"))?)?;
        write_results(&root, task, &sc, &report, &dir, small, started.elapsed().as_secs_f64(), seeds)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_results(
    root: &Path,
    task: &str,
    sc: &Scenario,
    report: &Report,
    dir: &Path,
    small: bool,
    seconds: f64,
    seeds: usize,
) -> Result<()> {
    let out = root.join("docs/results/reproduce").join(&sc.name);
    std::fs::create_dir_all(&out)?;
    for f in ["report.md", "report.json", "config.toml"] {
        std::fs::copy(dir.join(f), out.join(f))?;
    }
    rfa::compare::plot_gap_vs_time(report, &out.join("gap_vs_time.png"))?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let table = rfa::compare::markdown(report);
    let section = format!(
        "### {name}\n\n`cargo xtask reproduce {task}{flag}` — {kind}; {train} training samples, {forget} forgotten (`{spec}`), {test} test \
samples; {seeds} seed(s) per method; ran on {backend}, {cores} CPU cores visible, {minutes:.0} min for the whole scenario (training included).\n\n\
{table}\nRows: mean ± sample std over seeds. Configuration, full report (with every seed's row) and plot: \
[docs/results/reproduce/{name}/](results/reproduce/{name}/).\n\n![gap vs time](results/reproduce/{name}/gap_vs_time.png)\n",
        name = sc.name,
        flag = if small { " --small" } else { "" },
        kind = if small { "the `--small` version (2 CPU cores, one session)" } else { "full size" },
        train = report.train_samples,
        forget = report.forget_samples,
        spec = report.forget,
        test = report.test_samples,
        backend = report.backend,
        minutes = seconds / 60.0,
    );
    std::fs::write(out.join("summary.md"), &section)?;
    let results = root.join("docs/RESULTS.md");
    let text = std::fs::read_to_string(&results).unwrap_or_default();
    let (open, close) = (format!("<!-- reproduce:{} -->", sc.name), format!("<!-- /reproduce:{} -->", sc.name));
    let block = format!("{open}\n{section}{close}");
    let text = match (text.find(&open), text.find(&close)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &text[..a], block, &text[b + close.len()..]),
        _ => {
            let heading = "## Method comparison (`cargo xtask reproduce`)";
            let mut t = text.trim_end().to_string();
            if !t.contains(heading) {
                t += &format!(
                    "\n\n{heading}\n\nEvery method on the same original model, data, LoRA adapters (RFA's rank, alpha and \
targets), batches and AdamW; settings per method in xtask/src/reproduce.rs (not tuned per task).\n"
                );
            }
            format!("{t}\n\n{block}\n")
        }
    };
    std::fs::write(&results, text)?;
    eprintln!("wrote {} and docs/RESULTS.md", out.display());
    Ok(())
}
