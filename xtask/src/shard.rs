//! `cargo xtask reproduce TASK [--small] --list | --shard I/N | --merge`: the comparison matrix
//! as a grid of cells in a fixed order — every scenario's M0 and M\* first, then every method ×
//! seed — for cluster schedulers (docs/SCALING.md: a Slurm array, a Kubernetes Indexed Job).
//! Shard I of N runs the cells whose index is I modulo N; each cell writes its own folder of its
//! scenario's run (the run's per-folder locks keep cells of one run apart). `--merge` evaluates
//! every scenario once all of its cells are done and writes the tables, as the unsharded command
//! does.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::reproduce::{
    LABEL_METHODS, METHOD_SETS, Scenario, apply_sets, copy_dir, rfa, rfa_binary, scenarios,
    write_results,
};

/// What `--list`, `--shard` or `--merge` asks for.
pub enum Mode {
    List,
    /// `wait`: seconds a method cell waits for its M0 from another shard (0: refuse at once).
    Shard {
        index: usize,
        count: usize,
        wait: u64,
    },
    Merge,
}

/// `I/N` with I < N.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let (i, n) = s.split_once('/').context("--shard I/N, e.g. --shard 0/3")?;
    let (i, n): (usize, usize) = (
        i.trim().parse().with_context(|| format!("--shard {s}: I is a number"))?,
        n.trim().parse().with_context(|| format!("--shard {s}: N is a number"))?,
    );
    if n == 0 || i >= n {
        bail!("--shard {s}: I counts from 0 and is less than N");
    }
    Ok((i, n))
}

/// One cell of the grid.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Train { scenario: usize },
    Retrain { scenario: usize },
    Unlearn { scenario: usize, method: &'static str, seed: u64 },
}

impl Cell {
    fn scenario(&self) -> usize {
        match self {
            Self::Train { scenario }
            | Self::Retrain { scenario }
            | Self::Unlearn { scenario, .. } => *scenario,
        }
    }

    /// Whether its folder is complete.
    fn done(&self, run: &Path) -> bool {
        let folder = match self {
            Self::Train { .. } => "original".to_string(),
            Self::Retrain { .. } => "retrain".to_string(),
            Self::Unlearn { method, seed, .. } => format!("{method}-s{seed}"),
        };
        run.join(folder).join("phase.json").is_file()
    }

    fn describe(&self, scs: &[Scenario]) -> String {
        let name = &scs[self.scenario()].name;
        match self {
            Self::Train { .. } => format!("{name}: M0 (rfa train)"),
            Self::Retrain { .. } => format!("{name}: M* (rfa retrain)"),
            Self::Unlearn { method, seed, .. } => format!("{name}: {method}, seed {seed}"),
        }
    }
}

/// The grid: every scenario's M0 and M*, then every method (that applies, or `only`) × seed.
pub fn grid(scs: &[Scenario], seeds: usize, only: &[String]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for scenario in 0..scs.len() {
        cells.push(Cell::Train { scenario });
        cells.push(Cell::Retrain { scenario });
    }
    for (scenario, sc) in scs.iter().enumerate() {
        for (method, _) in METHOD_SETS {
            if (sc.language_model && LABEL_METHODS.contains(&method))
                || (!only.is_empty() && !only.iter().any(|m| m == method))
            {
                continue;
            }
            for seed in 0..seeds as u64 {
                cells.push(Cell::Unlearn { scenario, method, seed });
            }
        }
    }
    cells
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    task: &str,
    small: bool,
    seeds: usize,
    only: &[String],
    runs: &Path,
    device: &str,
    sets: &[String],
    mode: Mode,
) -> Result<()> {
    let root = crate::root();
    let bin = rfa_binary(&root, device)?;
    std::fs::create_dir_all(runs)?;
    let runs = &std::path::absolute(runs)?;
    let mut scs = scenarios(&root, &bin, task, small, None)?;
    apply_sets(&mut scs, sets)?;
    let cells = grid(&scs, seeds, only);
    let config = |sc: &Scenario| -> Result<std::path::PathBuf> {
        let p = runs.join(format!("{}.toml", sc.name));
        std::fs::write(&p, toml::to_string_pretty(&sc.config)?)?;
        Ok(p)
    };
    match mode {
        Mode::List => {
            for (i, c) in cells.iter().enumerate() {
                let state = if c.done(&runs.join(&scs[c.scenario()].name)) { "done" } else { "" };
                println!("{i:>4}  {:<60} {state}", c.describe(&scs));
            }
            println!("{} cells", cells.len());
        }
        Mode::Shard { index, count, wait } => {
            for (i, c) in cells.iter().enumerate().filter(|(i, _)| i % count == index) {
                let sc = &scs[c.scenario()];
                let dir = runs.join(&sc.name);
                eprintln!("cell {i} (shard {index}/{count}): {}", c.describe(&scs));
                let cfg = config(sc)?;
                match c {
                    Cell::Train { scenario } => {
                        // M0 does not depend on what is forgotten: another scenario's finished
                        // one is copied (`rfa train` checks its fingerprint).
                        let done = (0..scs.len())
                            .filter(|&o| o != *scenario)
                            .find(|&o| Cell::Train { scenario: o }.done(&runs.join(&scs[o].name)));
                        if let Some(o) = done
                            && !dir.join("original").exists()
                        {
                            copy_dir(
                                &runs.join(&scs[o].name).join("original"),
                                &dir.join("original"),
                            )?;
                        }
                        rfa(&bin, &["train"], &cfg, runs, device, &[])?;
                    }
                    Cell::Retrain { .. } => rfa(&bin, &["retrain"], &cfg, runs, device, &[])?,
                    Cell::Unlearn { scenario, method, seed } => {
                        if c.done(&dir) {
                            continue;
                        }
                        let m0 = Cell::Train { scenario: *scenario };
                        // Shards of one array run side by side: M0 may be on its way.
                        let deadline =
                            std::time::Instant::now() + std::time::Duration::from_secs(wait);
                        while !m0.done(&dir) && std::time::Instant::now() < deadline {
                            std::thread::sleep(std::time::Duration::from_secs(2));
                        }
                        if !m0.done(&dir) {
                            let k = cells.iter().position(|x| *x == m0).expect("in the grid");
                            bail!(
                                "cell {i} ({}) needs M0 of {}, which cell {k} makes: run shard {}/{count} first (or --wait SECONDS for it)",
                                c.describe(&scs),
                                sc.name,
                                k % count
                            );
                        }
                        let mut s: Vec<String> = METHOD_SETS
                            .iter()
                            .find(|m| m.0 == *method)
                            .map(|m| m.1.iter().map(|x| x.to_string()).collect())
                            .unwrap_or_default();
                        s.push(format!("unlearn.seed={seed}"));
                        rfa(&bin, &["unlearn", "--method", method], &cfg, runs, device, &s)?;
                    }
                }
            }
        }
        Mode::Merge => {
            let missing: Vec<String> = cells
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.done(&runs.join(&scs[c.scenario()].name)))
                .map(|(i, c)| format!("cell {i} ({})", c.describe(&scs)))
                .collect();
            if !missing.is_empty() {
                bail!(
                    "{} of {} cells are not done: {}",
                    missing.len(),
                    cells.len(),
                    missing.join("; ")
                );
            }
            for sc in &scs {
                let cfg = config(sc)?;
                rfa(&bin, &["eval"], &cfg, runs, device, &[])?;
                let dir = runs.join(&sc.name);
                let report: Value = serde_json::from_str(
                    &std::fs::read_to_string(dir.join("report/report.json"))
                        .with_context(|| format!("reading {}'s report", sc.name))?,
                )?;
                write_results(task, sc, &report, None, &dir, small, None, seeds)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(name: &str, lm: bool) -> Scenario {
        Scenario { name: name.into(), config: toml::Table::new(), language_model: lm }
    }

    #[test]
    fn the_grid_trains_first_and_every_cell_is_in_exactly_one_shard() {
        let scs = [sc("a", false), sc("b", true)];
        let cells = grid(&scs, 2, &[]);
        assert_eq!(cells[..4].iter().filter(|c| !matches!(c, Cell::Unlearn { .. })).count(), 4);
        // 9 methods × 2 seeds for the classifier, 7 × 2 for the language model.
        assert_eq!(cells.len(), 4 + 18 + 14);
        for n in 1..5 {
            let mut seen = vec![0; cells.len()];
            for i in 0..n {
                for (k, _) in cells.iter().enumerate().filter(|(k, _)| k % n == i) {
                    seen[k] += 1;
                }
            }
            assert!(seen.iter().all(|&s| s == 1));
        }
        assert_eq!(grid(&scs, 1, &["rfa".into()]).len(), 4 + 2);
        assert_eq!(parse_shard("2/3").unwrap(), (2, 3));
        for bad in ["3/3", "1", "a/2", "0/0"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }
}
