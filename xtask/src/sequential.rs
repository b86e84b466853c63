//! `cargo xtask reproduce fashion-mnist --small --sequential 3`: deletion requests one after
//! another on the embedded Fashion-MNIST subset. Request k forgets another `--share` percent
//! of D (`random:P` after the earlier requests draws from what is left) with `rfa unlearn
//! --after` the previous request, for RFA and the two best baselines of the random-forgetting
//! sweep, each method along its own chain. After each request every method is compared with
//! M\*_k, retrained without all k requests' samples. Writes `docs/results/sequential/<name>/`
//! (each request's report, `cases.json`, RFA's ledger, `summary.md`) and the section of
//! docs/RESULTS.md.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::reproduce::{demo, rfa, rfa_binary, set, with_section};

/// RFA and the two baselines with the lowest mean gap in the random-forgetting sweep
/// (docs/RESULTS.md, fashion-mnist-random-small), with reproduce.rs's settings.
const METHODS: [(&str, &str, &[&str]); 3] = [
    ("rfa", "RFA", &[]),
    ("grad-ascent", "grad-ascent", &["unlearn.lr=1e-4"]),
    ("salun", "salun", &["unlearn.lr=1e-3"]),
];

const METRICS: [(&str, &str); 5] = [
    ("ua", "UA"),
    ("ra", "RA"),
    ("ta", "TA"),
    ("mia_efficacy", "MIA-Efficacy"),
    ("average_gap", "gap"),
];

pub fn run(
    requests: usize,
    share: f64,
    seeds: std::ops::Range<u64>,
    runs: &Path,
    device: &str,
) -> Result<()> {
    if requests == 0 || !(share > 0.0 && share * requests as f64 <= 50.0) {
        bail!("--sequential N with --share P: N ≥ 1 requests of P % each, at most half of D");
    }
    let root = crate::root();
    let bin = rfa_binary(&root, device)?;
    let runs = std::path::absolute(runs.join("sequential"))?;
    std::fs::create_dir_all(&runs)?;
    let name = format!("fashion-mnist-sequential{requests}x{share}-small");
    let out = root.join("docs/results/sequential").join(&name);
    std::fs::create_dir_all(&out)?;
    let started = std::time::Instant::now();
    let mut cases = Vec::new();
    let mut ledger = String::new();
    // Each run seed its own M0, requests (drawn with that seed) and chains.
    for seed in seeds.clone() {
        let chain = |k: usize| format!("{name}-seed{seed}-request{k}");
        for k in 1..=requests {
            let run_name = chain(k);
            let mut c = demo(&bin)?;
            c.insert("name".into(), run_name.clone().into());
            c.insert("seed".into(), (seed as i64).into());
            set(&mut c, "data", "forget", format!("random:{share}"));
            if k > 1 {
                let previous = runs.join(chain(k - 1));
                set(&mut c, "data", "after", previous.to_string_lossy().into_owned());
            }
            let config = runs.join(format!("{run_name}.toml"));
            std::fs::write(&config, toml::to_string_pretty(&c)?)?;
            let dir = runs.join(&run_name);
            if k == 1 {
                rfa(&bin, &["train"], &config, &runs, device, &[])?;
            }
            // After the first request, each method continues its own chain (and the first
            // unlearning gives the run the chain's M0 for eval).
            for (method, _, sets) in METHODS {
                if !dir.join(format!("{method}/phase.json")).is_file() {
                    let s: Vec<String> = sets.iter().map(|x| x.to_string()).collect();
                    rfa(&bin, &["unlearn", "--method", method], &config, &runs, device, &s)?;
                }
            }
            rfa(&bin, &["retrain"], &config, &runs, device, &[])?;
            rfa(&bin, &["eval"], &config, &runs, device, &[])?;
            let report: Value = read_json(&dir.join("report/report.json"))?;
            for f in ["report.md", "report.json"] {
                std::fs::copy(
                    dir.join("report").join(f),
                    out.join(format!("seed{seed}-request{k}-{f}")),
                )?;
            }
            // Dr = D without this request's and every earlier request's samples (the receipt
            // counts the earlier ones).
            let receipt = read_json(&dir.join("rfa/receipt.json"))?;
            let n = |v: &Value| v.as_u64().unwrap_or(0);
            let retain = n(&report["train_samples"])
                .saturating_sub(n(&report["forget_samples"]))
                .saturating_sub(n(&receipt["request"]["earlier_forgotten"]));
            cases.push(json!({
                "seed": seed,
                "request": k,
                "forget": format!("random:{share}"),
                "forget_samples": report["forget_samples"],
                "retain_samples": retain,
                "models": report["models"],
            }));
        }
        // RFA's chain as `rfa ledger` lists it, every link checked.
        let out_ledger =
            Command::new(&bin).arg("ledger").arg(runs.join(chain(requests))).output()?;
        if !out_ledger.status.success() {
            bail!("rfa ledger failed: {}", String::from_utf8_lossy(&out_ledger.stderr));
        }
        let text = String::from_utf8(out_ledger.stdout)?;
        std::fs::write(out.join(format!("ledger-rfa-seed{seed}.md")), &text)?;
        if ledger.is_empty() {
            ledger = format!("Run seed {seed}:\n\n{text}");
        }
    }
    std::fs::write(out.join("cases.json"), serde_json::to_string_pretty(&cases)?)?;
    let section =
        render(&name, requests, share, &seeds, &cases, &ledger, device, started.elapsed());
    std::fs::write(out.join("summary.md"), &section)?;
    let results = root.join("docs/RESULTS.md");
    let text =
        with_section(&std::fs::read_to_string(&results).unwrap_or_default(), &name, &section);
    std::fs::write(&results, text)?;
    eprintln!("wrote {} and docs/RESULTS.md", out.display());
    Ok(())
}

fn read_json(p: &Path) -> Result<Value> {
    serde_json::from_str(
        &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
    )
    .with_context(|| format!("parsing {}", p.display()))
}

fn metric(case: &Value, name: &str, key: &str) -> Option<f64> {
    case["models"].as_array()?.iter().find(|m| m["name"].as_str() == Some(name))?[key].as_f64()
}

/// Mean ± sample std (± omitted for one value).
fn mean_std(v: &[f64]) -> String {
    match crate::sweep::mean_std(v) {
        (mean, _) if v.len() < 2 => format!("{mean:.2}"),
        (mean, sd) => format!("{mean:.2} ± {sd:.2}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn render(
    name: &str,
    requests: usize,
    share: f64,
    seeds: &std::ops::Range<u64>,
    cases: &[Value],
    ledger: &str,
    device: &str,
    took: std::time::Duration,
) -> String {
    let mut t = String::from("| after request | Df / Dr | model | ");
    t += &METRICS.iter().map(|m| m.1).collect::<Vec<_>>().join(" | ");
    t += " | time / M\\*'s |\n|---:|---|---|";
    t += &"---:|".repeat(METRICS.len() + 1);
    t += "\n";
    let rows: Vec<(&str, &str)> = [("original (M0)", "M0"), ("retrain (M*)", "M\\*")]
        .into_iter()
        .chain(METHODS.iter().map(|m| (m.1, m.1)))
        .collect();
    let mut best = Vec::new();
    let mut below_m0 = Vec::new();
    for k in 1..=requests as u64 {
        let of_k: Vec<&Value> = cases.iter().filter(|c| c["request"].as_u64() == Some(k)).collect();
        let Some(first) = of_k.first() else { continue };
        let sizes = format!("{} / {}", first["forget_samples"], first["retain_samples"]);
        let values = |report_name: &str, key: &str| -> Vec<f64> {
            of_k.iter().filter_map(|c| metric(c, report_name, key)).collect()
        };
        for (report_name, shown) in &rows {
            let cell = |key: &str| {
                let v = values(report_name, key);
                if v.is_empty() { "—".to_string() } else { mean_std(&v) }
            };
            // M0's and M*'s own times are training times: only the methods' are ratios.
            let ratio = if report_name.ends_with(')') {
                "—".to_string()
            } else {
                let r: Vec<f64> = of_k
                    .iter()
                    .filter_map(|c| {
                        Some(
                            metric(c, report_name, "seconds")?
                                / metric(c, "retrain (M*)", "seconds")?,
                        )
                    })
                    .map(|x| 100.0 * x)
                    .collect();
                if r.is_empty() { "—".into() } else { format!("{} %", mean_std(&r)) }
            };
            let shown = if *shown == "RFA" { "**RFA**".to_string() } else { shown.to_string() };
            t += &format!(
                "| {k} | {sizes} | {shown} | {} | {ratio} |\n",
                METRICS.iter().map(|m| cell(m.0)).collect::<Vec<_>>().join(" | ")
            );
        }
        let mean_gap = |m: &str| {
            let v = values(m, "average_gap");
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let lowest = METHODS
            .iter()
            .filter_map(|m| Some((m.1, mean_gap(m.1)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        best.push(format!(
            "request {k}: {}",
            lowest.map_or("—".into(), |(m, g)| format!(
                "{m} ({g:.2}; M0 {:.2})",
                mean_gap("original (M0)").unwrap_or(f64::NAN)
            ))
        ));
        let rfa_vs_m0: Vec<String> = of_k
            .iter()
            .filter(|c| {
                metric(c, "RFA", "average_gap") >= metric(c, "original (M0)", "average_gap")
            })
            .map(|c| format!("seed {}", c["seed"]))
            .collect();
        below_m0.push(format!(
            "request {k}: {}",
            if rfa_vs_m0.is_empty() { "none".into() } else { rfa_vs_m0.join(", ") }
        ));
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let n = seeds.end - seeds.start;
    let from =
        if seeds.start > 0 { format!(" --from-seed {}", seeds.start) } else { String::new() };
    format!(
        "### {name}\n\n`cargo xtask reproduce fashion-mnist --small --sequential {requests} --share {share} --seeds {n}{from}` — {n} run seed(s) (each its own M0, requests and chains), {requests} requests of {share} % of D each (`random:{share}`, request k drawn from what earlier requests left), each with `rfa unlearn --after` the previous one; every method continues its own chain, and after request k all are compared with M\\*_k, retrained without the samples of requests 1…k. Df is request k's samples; Dr is D without all of them. Rows: mean ± sample std over run seeds. On {device}, {cores} CPU cores visible, {minutes:.0} min in all.\n\n{t}\nLowest mean gap per request: {best}.\n\nRFA's gap at or above M0's (doing nothing): {below}.\n\nRFA's chain as `rfa ledger` lists it (every receipt's link checked; Df / Dr / val. acc. and the MIA AUC are the receipt's own metrics on the validation probes, no M\\* needed). {ledger}\nReports of each request and seed, every seed's ledger and the rows above: [docs/results/sequential/{name}/](results/sequential/{name}/).\n",
        minutes = took.as_secs_f64() / 60.0,
        best = best.join("; "),
        below = below_m0.join("; "),
    )
}
