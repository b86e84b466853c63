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
use serde_json::Value;

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

/// Run configurations as TOML tables (xtask drives the `rfa` binary and reads what it writes;
/// it does not link the library).
struct Scenario {
    name: String,
    config: toml::Table,
    language_model: bool,
}

fn read(root: &Path, rel: &str) -> Result<toml::Table> {
    let p = root.join(rel);
    toml::from_str(
        &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
    )
    .with_context(|| format!("parsing {}", p.display()))
}

/// `table.section.key = value`.
pub(crate) fn set(t: &mut toml::Table, section: &str, key: &str, value: impl Into<toml::Value>) {
    let s = t.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(s) = s.as_table_mut() {
        s.insert(key.to_string(), value.into());
    }
}

fn get_str(t: &toml::Table, section: &str, key: &str) -> Option<String> {
    t.get(section)?.get(key)?.as_str().map(str::to_string)
}

/// The demo's configuration, from the `rfa` binary (`rfa demo --print-config`).
pub(crate) fn demo(bin: &Path) -> Result<toml::Table> {
    let out = Command::new(bin)
        .args(["demo", "--print-config"])
        .output()
        .context("running rfa demo --print-config")?;
    if !out.status.success() {
        bail!("rfa demo --print-config failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(toml::from_str(&String::from_utf8(out.stdout)?)?)
}

fn scenarios(root: &Path, bin: &Path, task: &str, small: bool) -> Result<Vec<Scenario>> {
    let mut out = Vec::new();
    let mut add = |name: &str, mut c: toml::Table, forget: &str, lm: bool| {
        let name = format!("{name}{}", if small { "-small" } else { "" });
        c.insert("name".into(), name.clone().into());
        set(&mut c, "data", "forget", forget);
        out.push(Scenario { name, config: c, language_model: lm });
    };
    match task {
        "fashion-mnist" => {
            let mut c = demo(bin)?;
            if !small {
                set(&mut c, "data", "path", "~/.cache/rfa-assets/fashion-mnist");
            }
            add("fashion-mnist-class1", c.clone(), "class:1", false);
            add("fashion-mnist-random10", c, "random:10", false);
        }
        "cifar10" => {
            let mut c = demo(bin)?;
            set(&mut c, "data", "dataset", "image-folder");
            set(&mut c, "data", "path", "~/.cache/rfa-assets/cifar10");
            set(&mut c, "model", "preset", "vit-small");
            set(&mut c, "train", "epochs", if small { 5 } else { 10 });
            set(&mut c, "train", "lr", 1e-3);
            set(&mut c, "train", "batch_size", 128);
            if small {
                set(&mut c, "data", "max_train", 2000);
                set(&mut c, "data", "max_test", 500);
            }
            add("cifar10-class0", c.clone(), "class:airplane", false);
            add("cifar10-random10", c, "random:10", false);
        }
        "imdb" => {
            let mut c = read(root, "configs/imdb-minilm.toml")?;
            if small {
                set(&mut c, "data", "max_train", 200);
                set(&mut c, "data", "max_test", 100);
                set(&mut c, "data", "max_len", 64);
            }
            add("imdb-random10", c.clone(), "random:10", false);
            if !small {
                add("imdb-random5", c, "random:5", false);
            }
        }
        "eli5" => {
            let mut c = read(root, "configs/eli5-gpt2.toml")?;
            if small {
                set(&mut c, "data", "per_category", 30);
                set(&mut c, "data", "max_len", 64);
            }
            let forget =
                get_str(&c, "data", "forget").unwrap_or_else(|| "class:Mathematics".into());
            add("eli5-category", c, &forget, true);
        }
        other => bail!("unknown task `{other}` (fashion-mnist, cifar10, imdb, eli5)"),
    }
    Ok(out)
}

pub(crate) fn rfa_binary(root: &Path, device: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(["build", "--release", "-p", "rfa"]);
    if device.starts_with("cuda") {
        cmd.args(["--features", "cuda"]);
    }
    if !cmd.status()?.success() {
        bail!("building the rfa binary failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release/rfa"))
}

pub(crate) fn rfa(
    bin: &Path,
    args: &[&str],
    config: &Path,
    runs: &Path,
    device: &str,
    sets: &[String],
) -> Result<()> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .arg("--runs-dir")
        .arg(runs)
        .args(["--device", device]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    eprintln!("+ rfa {} {}", args.join(" "), sets.join(" "));
    if !cmd.status().with_context(|| format!("running {}", bin.display()))?.success() {
        bail!("`rfa {}` failed", args.join(" "));
    }
    Ok(())
}

pub fn run(
    task: &str,
    small: bool,
    seeds: usize,
    only: &[String],
    runs: &Path,
    device: &str,
) -> Result<()> {
    let root = crate::root();
    let bin = rfa_binary(&root, device)?;
    std::fs::create_dir_all(runs)?;
    for sc in scenarios(&root, &bin, task, small)? {
        let config = runs.join(format!("{}.toml", sc.name));
        std::fs::write(&config, toml::to_string_pretty(&sc.config)?)?;
        let dir = runs.join(&sc.name);
        let started = std::time::Instant::now();
        rfa(&bin, &["train"], &config, runs, device, &[])?;
        rfa(&bin, &["retrain"], &config, runs, device, &[])?;
        for (method, sets) in METHOD_SETS {
            if (sc.language_model && LABEL_METHODS.contains(&method))
                || (!only.is_empty() && !only.iter().any(|m| m == method))
            {
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
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report/report.json"))?)?;
        write_results(
            &root,
            task,
            &sc,
            &report,
            &dir,
            small,
            started.elapsed().as_secs_f64(),
            seeds,
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_results(
    root: &Path,
    task: &str,
    sc: &Scenario,
    report: &Value,
    dir: &Path,
    small: bool,
    seconds: f64,
    seeds: usize,
) -> Result<()> {
    let out = root.join("docs/results/reproduce").join(&sc.name);
    std::fs::create_dir_all(&out)?;
    for f in [
        "report/report.md",
        "report/report.json",
        "config.toml",
        "report/comparison.md",
        "report/plots/gap_vs_time.png",
    ] {
        let to = out.join(Path::new(f).file_name().expect("file name"));
        std::fs::copy(dir.join(f), &to)
            .with_context(|| format!("copying {}", dir.join(f).display()))?;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let table = std::fs::read_to_string(dir.join("report/comparison.md"))?;
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    let s = |k: &str| report[k].as_str().unwrap_or("").to_string();
    let section = format!(
        "### {name}\n\n`cargo xtask reproduce {task}{flag}` — {kind}; {train} training samples, {forget} forgotten (`{spec}`), {test} test \
samples; {seeds} seed(s) per method; ran on {backend}, {cores} CPU cores visible, {minutes:.0} min for the whole scenario (training included).\n\n\
{table}\nRows: mean ± sample std over seeds. Configuration, full report (with every seed's row) and plot: \
[docs/results/reproduce/{name}/](results/reproduce/{name}/).\n\n![gap vs time](results/reproduce/{name}/gap_vs_time.png)\n",
        name = sc.name,
        flag = if small { " --small" } else { "" },
        kind = if small { "the `--small` version (2 CPU cores, one session)" } else { "full size" },
        train = n("train_samples"),
        forget = n("forget_samples"),
        spec = s("forget"),
        test = n("test_samples"),
        backend = s("backend"),
        minutes = seconds / 60.0,
    );
    std::fs::write(out.join("summary.md"), &section)?;
    let results = root.join("docs/RESULTS.md");
    let text =
        with_section(&std::fs::read_to_string(&results).unwrap_or_default(), &sc.name, &section);
    std::fs::write(&results, text)?;
    eprintln!("wrote {} and docs/RESULTS.md", out.display());
    Ok(())
}

/// `text` with the scenario's section (between its markers) replaced, or appended under the
/// comparison heading when it is not there yet.
pub(crate) fn with_section(text: &str, name: &str, section: &str) -> String {
    let (open, close) =
        (format!("<!-- reproduce:{name} -->"), format!("<!-- /reproduce:{name} -->"));
    let block = format!("{open}\n{section}{close}");
    match (text.find(&open), text.find(&close)) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{}{}", &text[..a], block, &text[b + close.len()..])
        }
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
    }
}

#[cfg(test)]
mod tests {
    use super::with_section;

    #[test]
    fn sections_are_appended_once_then_replaced_in_place() {
        let doc = "# Results\n\nintro\n";
        let once = with_section(doc, "a", "### a\nold\n");
        assert!(
            once.contains("## Method comparison")
                && once.contains("<!-- reproduce:a -->\n### a\nold\n<!-- /reproduce:a -->")
        );
        let two = with_section(&once, "b", "### b\n");
        assert_eq!(two.matches("## Method comparison").count(), 1);
        let again = with_section(&two, "a", "### a\nnew\n");
        assert!(again.contains("new") && !again.contains("old"));
        assert!(
            again.find("reproduce:a").unwrap() < again.find("reproduce:b").unwrap(),
            "replaced in place"
        );
        assert_eq!(again.len(), two.len());
    }
}
