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
pub(crate) const METHOD_SETS: [(&str, &[&str]); 9] = [
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
pub(crate) const LABEL_METHODS: [&str; 2] = ["random-label", "salun"];

/// Run configurations as TOML tables (xtask drives the `rfa` binary and reads what it writes;
/// it does not link the library).
pub(crate) struct Scenario {
    pub name: String,
    pub config: toml::Table,
    pub language_model: bool,
}

impl Scenario {
    /// `--pretrained`: the same scenario from scratch (same architecture and fine-tuning budget;
    /// RFA only), which shows what the backbone is worth.
    pub(crate) fn scratch_twin(&self) -> Scenario {
        let mut config = self.config.clone();
        if let Some(m) = config.get_mut("model").and_then(|m| m.as_table_mut()) {
            m.remove("path");
        }
        let name = self.name.replace("-pretrained", "-scratch");
        config.insert("name".into(), name.clone().into());
        Scenario { name, config, language_model: self.language_model }
    }
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

/// `--pretrained`'s backbone: its run configuration (written to `config_file` in the runs folder)
/// and the folder `rfa pretrain` writes it to, which the scenarios' `model.path` names.
pub(crate) struct Backbone {
    pub config: toml::Table,
    pub config_file: PathBuf,
    pub dir: PathBuf,
}

impl Backbone {
    pub(crate) fn plan(root: &Path, task: &str, small: bool, runs: &Path) -> Result<Self> {
        let mut config = backbone(root, task, small)?;
        let name = config["name"].as_str().unwrap_or("backbone").to_string();
        let dir = runs.join(&name).join("pretrained");
        set(&mut config, "model", "path", dir.to_string_lossy().into_owned());
        let config_file = runs.join(format!("{name}.toml"));
        std::fs::write(&config_file, toml::to_string_pretty(&config)?)?;
        Ok(Self { config, config_file, dir })
    }
}

/// `--pretrained`: the backbone's run configuration (`rfa pretrain` reads its `[pretrain]` and
/// `[model]`), from `configs/<task>-pretrained.toml` with the `--small` sizes.
fn backbone(root: &Path, task: &str, small: bool) -> Result<toml::Table> {
    let file = match task {
        "fashion-mnist" => "configs/fashion-mnist-pretrained.toml",
        "cifar10" => "configs/cifar10-pretrained.toml",
        "eli5" => "configs/eli5-gpt2-pretrained.toml",
        other => bail!(
            "--pretrained: `{other}` has no rfa-made backbone (imdb fine-tunes the real all-MiniLM-L6-v2)"
        ),
    };
    let mut c = read(root, file)?;
    c.insert("name".into(), format!("{task}-backbone{}", if small { "-small" } else { "" }).into());
    if small {
        // Sized for 2 CPU cores (docs/RESULTS.md says what each size reached).
        match task {
            "eli5" => {
                set(&mut c, "pretrain", "max_samples", 4000);
                set(&mut c, "pretrain", "max_held_out", 300);
                set(&mut c, "pretrain", "max_len", 64);
                set(&mut c, "pretrain", "epochs", 1);
            }
            // Rotation sees each image four times.
            "cifar10" => {
                set(&mut c, "pretrain", "max_samples", 5000);
                set(&mut c, "pretrain", "max_held_out", 500);
                set(&mut c, "pretrain", "epochs", 4);
            }
            _ => {
                set(&mut c, "pretrain", "max_samples", 10000);
                set(&mut c, "pretrain", "max_held_out", 1000);
                set(&mut c, "pretrain", "epochs", 5);
            }
        }
    }
    Ok(c)
}

pub(crate) fn scenarios(
    root: &Path,
    bin: &Path,
    task: &str,
    small: bool,
    backbone: Option<&Backbone>,
) -> Result<Vec<Scenario>> {
    let mut out = Vec::new();
    let pretrained = backbone.is_some();
    let mut add = |name: &str, mut c: toml::Table, forget: &str, lm: bool| {
        let name = format!(
            "{name}{}{}",
            if pretrained { "-pretrained" } else { "" },
            if small { "-small" } else { "" }
        );
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
    // Fine-tuned from the backbone: its architecture (preset), its path, its tokenizer.
    if let Some(Backbone { config: b, dir: path, .. }) = backbone {
        for sc in &mut out {
            if let Some(m) = b.get("model").and_then(|m| m.as_table()) {
                for (k, v) in m {
                    set(&mut sc.config, "model", k, v.clone());
                }
            }
            set(&mut sc.config, "model", "path", path.to_string_lossy().into_owned());
            if task == "fashion-mnist" {
                // The colour backbone's fine-tuning settings (configs/fashion-mnist-pretrained.toml).
                if let Some(t) = b.get("train") {
                    sc.config.insert("train".into(), t.clone());
                }
            }
        }
    }
    Ok(out)
}

/// `RFA_BIN` names an `rfa` binary to run instead of building the release one (CI's shard check
/// runs the debug build `cargo xtask test` made).
pub(crate) fn rfa_binary(root: &Path, device: &str) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("RFA_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(["build", "--release", "-p", "rfa"]);
    let mut features = Vec::new();
    if device.starts_with("cuda") {
        features.push("cuda");
    }
    // A device list (cuda:0,cuda:1) trains data-parallel: burn's collective operations.
    if device.contains(',') {
        features.push("collective");
    }
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
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

/// `--set section.key=value` on every scenario's configuration (the value read as TOML, else as a
/// string), as `rfa --set` reads it.
pub(crate) fn apply_sets(scs: &mut [Scenario], sets: &[String]) -> Result<()> {
    for s in sets {
        let (key, value) = s.split_once('=').with_context(|| format!("--set {s}: KEY=VALUE"))?;
        let (section, field) =
            key.split_once('.').with_context(|| format!("--set {s}: section.field=VALUE"))?;
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| value.into());
        for sc in scs.iter_mut() {
            set(&mut sc.config, section, field, value.clone());
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    task: &str,
    small: bool,
    pretrained: bool,
    seeds: usize,
    only: &[String],
    runs: &Path,
    device: &str,
    sets: &[String],
) -> Result<()> {
    let root = crate::root();
    let bin = rfa_binary(&root, device)?;
    std::fs::create_dir_all(runs)?;
    let runs = &std::path::absolute(runs)?;
    // --pretrained: one backbone for every scenario of the task (resumed if it is there).
    let backbone = match pretrained {
        false => None,
        true => {
            let b = Backbone::plan(&root, task, small, runs)?;
            rfa(&bin, &["pretrain"], &b.config_file, runs, device, &[])?;
            Some(b)
        }
    };
    let mut scs = scenarios(&root, &bin, task, small, backbone.as_ref())?;
    apply_sets(&mut scs, sets)?;
    // M0 does not depend on what is forgotten: the first scenario's is copied into the others
    // (`rfa train` checks its fingerprint and finds it complete).
    let (mut first, mut first_scratch) = (None::<std::path::PathBuf>, None::<std::path::PathBuf>);
    let share_m0 = |from: &Option<std::path::PathBuf>, name: &str| -> Result<()> {
        let to = runs.join(name).join("original");
        match from {
            Some(f) if !to.exists() => copy_dir(&f.join("original"), &to),
            _ => Ok(()),
        }
    };
    for sc in scs {
        let started = std::time::Instant::now();
        share_m0(&first, &sc.name)?;
        let report = run_scenario(&bin, &sc, runs, device, seeds, only)?;
        first.get_or_insert(runs.join(&sc.name));
        // The same scenario from scratch (same architecture and fine-tuning budget, RFA only):
        // what the backbone is worth.
        let scratch = match &backbone {
            None => None,
            Some(_) => {
                let twin = sc.scratch_twin();
                share_m0(&first_scratch, &twin.name)?;
                first_scratch.get_or_insert(runs.join(&twin.name));
                Some(run_scenario(&bin, &twin, runs, device, 1, &["rfa".to_string()])?)
            }
        };
        write_results(
            task,
            &sc,
            &report,
            scratch.as_ref(),
            &runs.join(&sc.name),
            small,
            Some(started.elapsed().as_secs_f64()),
            seeds,
        )?;
    }
    Ok(())
}

/// M0, M*, every method (or `only`) with each seed, and the report; what is already in the run
/// folder is reused, but for RFA: its `auto` settings come from the build, not the
/// configuration, so it runs again (seconds) and replaces an earlier result.
pub(crate) fn run_scenario(
    bin: &Path,
    sc: &Scenario,
    runs: &Path,
    device: &str,
    seeds: usize,
    only: &[String],
) -> Result<Value> {
    let config = runs.join(format!("{}.toml", sc.name));
    std::fs::write(&config, toml::to_string_pretty(&sc.config)?)?;
    let dir = runs.join(&sc.name);
    rfa(bin, &["train"], &config, runs, device, &[])?;
    rfa(bin, &["retrain"], &config, runs, device, &[])?;
    for (method, sets) in METHOD_SETS {
        if (sc.language_model && LABEL_METHODS.contains(&method))
            || (!only.is_empty() && !only.iter().any(|m| m == method))
        {
            continue;
        }
        for seed in 0..seeds as u64 {
            if method != "rfa" && dir.join(format!("{method}-s{seed}/phase.json")).is_file() {
                continue;
            }
            let mut s: Vec<String> = sets.iter().map(|x| x.to_string()).collect();
            s.push(format!("unlearn.seed={seed}"));
            rfa(bin, &["unlearn", "--method", method], &config, runs, device, &s)?;
        }
    }
    rfa(bin, &["eval"], &config, runs, device, &[])?;
    Ok(serde_json::from_str(&std::fs::read_to_string(dir.join("report/report.json"))?)?)
}

/// `--pretrained`: the backbone and what it is worth — TA of M0 and M* fine-tuned from it
/// against the same architecture and budget from scratch, and RFA's gap on both.
fn backbone_paragraph(report: &Value, scratch: &Value) -> String {
    // A language model's rows are under language_model.models.
    let lm = report["language_model"].is_object();
    let cell = |r: &Value, name: &str, key: &str| -> String {
        let models = if lm { &r["language_model"]["models"] } else { &r["models"] };
        models
            .as_array()
            .and_then(|ms| {
                ms.iter().find(|m| m["name"].as_str().is_some_and(|n| n.starts_with(name)))
            })
            .and_then(|m| m[key].as_f64())
            .map_or("—".into(), |v| format!("{v:.2}"))
    };
    let (header, columns): (&str, [(&str, &str); 3]) = if lm {
        (
            "| | M0 test perplexity | M\\* test perplexity | RFA Df perplexity |",
            [("original", "ppl_test"), ("retrain", "ppl_test"), ("RFA", "ppl_forget")],
        )
    } else {
        (
            "| | M0 TA | M\\* TA | RFA gap (seed 0) |",
            [("original", "ta"), ("retrain", "ta"), ("RFA", "average_gap")],
        )
    };
    let row = |r: &Value| columns.map(|(n, k)| cell(r, n, k)).join(" | ");
    let rows = format!(
        "{header}\n|---|---:|---:|---:|\n| from the backbone | {} |\n| from scratch | {} |\n",
        row(report),
        row(scratch)
    );
    let b = &report["backbone"];
    let p = &b["pretrain"];
    let quality = match (p["held_out_accuracy"].as_f64(), p["held_out_perplexity"].as_f64()) {
        (Some(a), _) => format!("held-out accuracy {a:.2} %"),
        (_, Some(x)) => format!("held-out perplexity {x:.2}"),
        _ => "—".into(),
    };
    format!(
        "Backbone `{}` (model.safetensors SHA-256 `{}`): {} pre-training on {}, {} samples, {} epochs; {quality} on {} held-out samples. At the same architecture and fine-tuning budget:\n\n{rows}\n",
        b["path"].as_str().unwrap_or("?"),
        &b["sha256"].as_str().unwrap_or("?").chars().take(12).collect::<String>(),
        p["objective"].as_str().unwrap_or("?"),
        p["source"].as_str().unwrap_or("?"),
        p["samples"],
        p["epochs"].as_array().map_or(0, Vec::len),
        p["held_out_samples"],
    )
}

/// Where the tables go: the repository (`docs/`), or `RFA_RESULTS_ROOT` (CI's shard check
/// writes two sets of tables to compare).
fn results_root() -> PathBuf {
    std::env::var_os("RFA_RESULTS_ROOT").map(PathBuf::from).unwrap_or_else(crate::root)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn write_results(
    task: &str,
    sc: &Scenario,
    report: &Value,
    scratch: Option<&Value>,
    dir: &Path,
    small: bool,
    seconds: Option<f64>,
    seeds: usize,
) -> Result<()> {
    let root = results_root();
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
samples; {seeds} seed(s) per method; ran on {backend}, {cores} CPU cores visible, {minutes}.\n\n\
{backbone}{table}\nRows: mean ± sample std over seeds. Configuration, full report (with every seed's row) and plot: \
[docs/results/reproduce/{name}/](results/reproduce/{name}/).\n\n![gap vs time](results/reproduce/{name}/gap_vs_time.png)\n",
        name = sc.name,
        flag = format!(
            "{}{}",
            if scratch.is_some() { " --pretrained" } else { "" },
            if small { " --small" } else { "" }
        ),
        backbone = scratch.map_or(String::new(), |s| backbone_paragraph(report, s)),
        kind = if small { "the `--small` version (2 CPU cores, one session)" } else { "full size" },
        train = n("train_samples"),
        forget = n("forget_samples"),
        spec = s("forget"),
        test = n("test_samples"),
        backend = s("backend"),
        minutes = match seconds {
            Some(s) => format!("{:.0} min for the whole scenario (training included)", s / 60.0),
            None => "in shards (each phase's time is in the report)".into(),
        },
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

pub(crate) fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}
