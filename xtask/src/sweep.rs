//! `cargo xtask reproduce fashion-mnist --small --classes all --seeds 3` and
//! `… --random 1,5,10 --seeds 3`: RFA with its defaults on cases nobody tuned for — every class
//! (or every random share) × several *run* seeds (each seed its own M0, M*, split and
//! adapters) — next to M0, M* and the strongest baselines. Writes
//! `docs/results/sweep/<name>/` (every case's report, `cases.json`, `summary.md`) and the
//! sweep's section of docs/RESULTS.md, with the bars checked as measured.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::reproduce::{copy_dir, demo, rfa, rfa_binary, set, with_section};

/// The baselines of the comparison table (the strongest of docs/RESULTS.md's small tables),
/// with reproduce.rs's settings.
const BASELINES: [(&str, &[&str]); 5] = [
    ("grad-diff", &["unlearn.lr=1e-3"]),
    ("npo", &["unlearn.lr=1e-3"]),
    ("salun", &["unlearn.lr=1e-3"]),
    ("random-label", &["unlearn.lr=1e-3"]),
    ("grad-ascent", &["unlearn.lr=1e-4"]),
];

const METRICS: [(&str, &str); 5] = [
    ("ua", "UA"),
    ("ra", "RA"),
    ("ta", "TA"),
    ("mia_efficacy", "MIA-Efficacy"),
    ("average_gap", "average gap"),
];

/// What a sweep forgets in each case.
pub enum Forget {
    Classes(Vec<usize>),
    RandomPercents(Vec<f64>),
}

impl Forget {
    fn cases(&self) -> Vec<(String, String)> {
        match self {
            Self::Classes(cs) => {
                cs.iter().map(|c| (format!("class{c}"), format!("class:{c}"))).collect()
            }
            Self::RandomPercents(ps) => {
                ps.iter().map(|p| (format!("random{p}"), format!("random:{p}"))).collect()
            }
        }
    }

    /// The section's name: seeds from 0 keep the plain name, a later range names it.
    fn name(&self, seeds: &std::ops::Range<u64>) -> String {
        let kind = match self {
            Self::Classes(_) => "classes",
            Self::RandomPercents(_) => "random",
        };
        match seeds.start {
            0 => format!("fashion-mnist-{kind}-small"),
            a => format!("fashion-mnist-{kind}-seeds{a}-{}-small", seeds.end - 1),
        }
    }
}

/// `all` or a comma-separated list of class indices.
pub fn parse_classes(s: &str) -> Result<Vec<usize>> {
    if s == "all" {
        return Ok((0..10).collect());
    }
    s.split(',')
        .map(|c| c.trim().parse::<usize>().with_context(|| format!("class `{c}`")))
        .collect()
}

pub fn run(forget: &Forget, seeds: std::ops::Range<u64>, runs: &Path, device: &str) -> Result<()> {
    let root = crate::root();
    let bin = rfa_binary(&root, device)?;
    let runs = runs.join("sweep");
    std::fs::create_dir_all(&runs)?;
    let started = std::time::Instant::now();
    let mut cases = Vec::new();
    for seed in seeds.clone() {
        let mut first_of_seed: Option<std::path::PathBuf> = None;
        for (label, spec) in forget.cases() {
            let name = format!("fashion-mnist-{label}-seed{seed}-small");
            let mut c = demo(&bin)?;
            c.insert("name".into(), name.clone().into());
            c.insert("seed".into(), (seed as i64).into());
            set(&mut c, "data", "forget", spec.as_str());
            let config = runs.join(format!("{name}.toml"));
            std::fs::write(&config, toml::to_string_pretty(&c)?)?;
            let dir = runs.join(&name);
            // M0 does not depend on what is forgotten: one per seed, copied into every case (its
            // fingerprint is checked by `rfa train`, which then finds it complete).
            if let Some(from) = &first_of_seed
                && !dir.join("original").exists()
            {
                copy_dir(&from.join("original"), &dir.join("original"))?;
            }
            rfa(&bin, &["train"], &config, &runs, device, &[])?;
            first_of_seed.get_or_insert(dir.clone());
            rfa(&bin, &["retrain"], &config, &runs, device, &[])?;
            // RFA is what a sweep measures, and its `auto` settings come from the build, not the
            // configuration: it runs every time (seconds), replacing an earlier result.
            rfa(&bin, &["unlearn", "--method", "rfa"], &config, &runs, device, &[])?;
            for (method, sets) in BASELINES {
                if !dir.join(format!("{method}/phase.json")).is_file() {
                    let s: Vec<String> = sets.iter().map(|x| x.to_string()).collect();
                    rfa(&bin, &["unlearn", "--method", method], &config, &runs, device, &s)?;
                }
            }
            rfa(&bin, &["eval"], &config, &runs, device, &[])?;
            let report: Value = read_json(&dir.join("report/report.json"))?;
            let log: Value = read_json(&dir.join("rfa/unlearn_log.json"))?;
            cases.push(json!({
                "case": label, "forget": spec, "seed": seed, "models": report["models"],
                "rfa_settings": log["settings"],
                "rfa_stop": log["stop"].as_object().map(|s| json!({
                    "reason": s["reason"], "stopped_after_step": s["stopped_after_step"],
                    "kept_step": s["kept_step"],
                })),
            }));
        }
    }
    write(&root, forget, seeds, &cases, device, started.elapsed().as_secs_f64())
}

fn read_json(p: &Path) -> Result<Value> {
    serde_json::from_str(
        &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
    )
    .with_context(|| format!("parsing {}", p.display()))
}

/// A model's row of a case by its report name (`RFA`, `grad-diff`, `original (M0)`, …).
fn model<'a>(case: &'a Value, name: &str) -> Option<&'a Value> {
    case["models"].as_array()?.iter().find(|m| m["name"].as_str() == Some(name))
}

fn metric(case: &Value, name: &str, key: &str) -> Option<f64> {
    model(case, name)?[key].as_f64()
}

/// Mean and sample standard deviation (0 for one value).
pub(crate) fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn write(
    root: &Path,
    forget: &Forget,
    seeds: std::ops::Range<u64>,
    cases: &[Value],
    device: &str,
    seconds: f64,
) -> Result<()> {
    if cases.is_empty() {
        bail!("no case ran");
    }
    let name = forget.name(&seeds);
    let name = name.as_str();
    let out = root.join("docs/results/sweep").join(name);
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("cases.json"), serde_json::to_string_pretty(cases)?)?;
    let models: Vec<&str> =
        ["original (M0)", "RFA"].into_iter().chain(BASELINES.iter().map(|b| b.0)).collect();
    let display = |m: &str| if m == "original (M0)" { "M0".to_string() } else { m.to_string() };

    // Per method: mean ± std and the worst case of each metric (worst: lowest UA / RA / TA /
    // MIA-Efficacy, highest gap).
    let mut t = String::from("| model | ");
    t += &METRICS
        .iter()
        .map(|m| format!("{} mean ± std (worst)", m.1))
        .collect::<Vec<_>>()
        .join(" | ");
    t += " | RA − M0's RA, worst | time / M*'s time, mean |\n|---|";
    t += &"---:|".repeat(METRICS.len() + 2);
    t += "\n";
    for m in &models {
        let mut cells = vec![display(m)];
        for (key, _) in METRICS {
            let v: Vec<f64> = cases.iter().filter_map(|c| metric(c, m, key)).collect();
            if v.is_empty() {
                cells.push("—".into());
                continue;
            }
            let (mean, std) = mean_std(&v);
            let worst = if key == "average_gap" {
                v.iter().cloned().fold(f64::MIN, f64::max)
            } else {
                v.iter().cloned().fold(f64::MAX, f64::min)
            };
            cells.push(format!("{mean:.2} ± {std:.2} ({worst:.2})"));
        }
        let ra_drop: Vec<f64> = cases
            .iter()
            .filter_map(|c| Some(metric(c, m, "ra")? - metric(c, "original (M0)", "ra")?))
            .collect();
        cells.push(
            ra_drop.iter().cloned().reduce(f64::min).map_or("—".into(), |x| format!("{x:+.2}")),
        );
        let ratio: Vec<f64> = cases
            .iter()
            .filter_map(|c| Some(metric(c, m, "seconds")? / metric(c, "retrain (M*)", "seconds")?))
            .collect();
        cells.push(if ratio.is_empty() {
            "—".into()
        } else {
            format!("{:.1} %", 100.0 * mean_std(&ratio).0)
        });
        t += &format!("| {} |\n", cells.join(" | "));
    }

    // Every case.
    let mut per = String::from(
        "| case | seed | M0 gap | RFA UA | RFA RA (M0) | RFA TA (M*) | RFA MIA | **RFA gap** | best baseline (gap) | RFA stop | RFA s / M* s |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|\n",
    );
    let mut bars = Bars::default();
    for c in cases {
        let f = |m: &str, k: &str| metric(c, m, k).unwrap_or(f64::NAN);
        let best = BASELINES
            .iter()
            .filter_map(|(b, _)| Some((*b, metric(c, b, "average_gap")?)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let stop = c["rfa_stop"].as_object().map_or("—".to_string(), |s| {
            format!(
                "{} after {}, kept {}",
                s["reason"].as_str().unwrap_or("?"),
                s["stopped_after_step"],
                s["kept_step"]
            )
        });
        per += &format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.2} | **{:.2}** | {} | {} | {:.2} / {:.1} |\n",
            c["case"].as_str().unwrap_or("?"),
            c["seed"],
            f("original (M0)", "average_gap"),
            f("RFA", "ua"),
            f("RFA", "ra"),
            f("original (M0)", "ra"),
            f("RFA", "ta"),
            f("retrain (M*)", "ta"),
            f("RFA", "mia_efficacy"),
            f("RFA", "average_gap"),
            best.map_or("—".into(), |(b, g)| format!("{b} ({g:.2})")),
            stop,
            f("RFA", "seconds"),
            f("retrain (M*)", "seconds"),
        );
        bars.add(c, best.map(|b| b.1), f);
    }
    let from =
        if seeds.start > 0 { format!(" --from-seed {}", seeds.start) } else { String::new() };
    let n = seeds.end - seeds.start;
    let cmd = match forget {
        Forget::Classes(_) => {
            format!("cargo xtask reproduce fashion-mnist --small --classes all --seeds {n}{from}")
        }
        Forget::RandomPercents(ps) => format!(
            "cargo xtask reproduce fashion-mnist --small --random {} --seeds {n}{from}",
            ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
        ),
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let section = format!(
        "### {name}\n\n`{cmd}` — {n} cases (each seed its own M0, M\\*, split and adapters; RFA with its defaults), on {device}, {cores} CPU cores visible, {minutes:.0} min in all.\n\n{t}\n{bars}\n<details><summary>Every case</summary>\n\n{per}\n</details>\n\nReports of every case: the run folders under `<--runs-dir>/sweep/` (not in the repository); the rows above: [docs/results/sweep/{name}/cases.json](results/sweep/{name}/cases.json).\n",
        n = cases.len(),
        minutes = seconds / 60.0,
        bars = bars.render(forget),
    );
    std::fs::write(out.join("summary.md"), &section)?;
    let results = root.join("docs/RESULTS.md");
    let text = with_section(&std::fs::read_to_string(&results).unwrap_or_default(), name, &section);
    std::fs::write(&results, text)?;
    eprintln!("wrote {} and docs/RESULTS.md", out.display());
    Ok(())
}

/// The bars, checked on the measured cases.
#[derive(Default)]
struct Bars {
    gaps: Vec<f64>,
    ua_below_95: Vec<String>,
    ra_drop_over_3: Vec<String>,
    not_below_m0: Vec<String>,
    over_best_baseline: Vec<String>,
}

impl Bars {
    fn add(&mut self, c: &Value, best: Option<f64>, f: impl Fn(&str, &str) -> f64) {
        let id = format!("{} seed {}", c["case"].as_str().unwrap_or("?"), c["seed"]);
        let gap = f("RFA", "average_gap");
        self.gaps.push(gap);
        if f("RFA", "ua") < 95.0 {
            self.ua_below_95.push(id.clone());
        }
        if f("original (M0)", "ra") - f("RFA", "ra") > 3.0 {
            self.ra_drop_over_3.push(id.clone());
        }
        if gap >= f("original (M0)", "average_gap") {
            self.not_below_m0.push(id.clone());
        }
        if best.is_some_and(|b| gap > 1.1 * b) {
            self.over_best_baseline.push(id);
        }
    }

    fn render(&self, forget: &Forget) -> String {
        let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
        let (mean, _) = mean_std(&self.gaps);
        let worst = self.gaps.iter().cloned().fold(f64::MIN, f64::max);
        match forget {
            Forget::Classes(_) => format!(
                "Bars: mean gap ≤ 2.0 — {} ({mean:.2}); worst ≤ 5.0 — {} ({worst:.2}); UA ≥ 95 in every case — {} (below: {}); RA within 3 points of M0's in every case — {} (more: {}).\n",
                met(mean <= 2.0),
                met(worst <= 5.0),
                met(self.ua_below_95.is_empty()),
                list(&self.ua_below_95),
                met(self.ra_drop_over_3.is_empty()),
                list(&self.ra_drop_over_3),
            ),
            Forget::RandomPercents(_) => format!(
                "Bars: RFA's gap below M0's in every case — {} (not below: {}); no worse than 1.1 × the best baseline's — {} (worse: {}).\n",
                met(self.not_below_m0.is_empty()),
                list(&self.not_below_m0),
                met(self.over_best_baseline.is_empty()),
                list(&self.over_best_baseline),
            ),
        }
    }
}
