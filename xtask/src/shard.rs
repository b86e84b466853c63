//! `cargo xtask reproduce TASK [--small] --list | --shard I/N | --merge`: the comparison matrix
//! as a grid of cells in a fixed order — every scenario's M0 and M\* first, then every method ×
//! seed — for cluster schedulers (docs/SCALING.md: a Slurm array, a Kubernetes Indexed Job).
//! Shard I of N runs the cells whose index is I modulo N; each cell writes its own folder of its
//! scenario's run (the run's per-folder locks keep cells of one run apart). `--merge` evaluates
//! every scenario once all of its cells are done and writes the tables, as the unsharded command
//! does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::reproduce::{
    Backbone, LABEL_METHODS, METHOD_SETS, Scenario, apply_sets, copy_dir, rfa, rfa_binary,
    scenarios, write_results,
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

/// The matrix a shard works on: the scenarios and, with `--pretrained`, the backbone they are
/// fine-tuned from and each scenario's scratch twin (RFA, one seed), after them.
pub struct Matrix {
    pub scs: Vec<Scenario>,
    /// Scenarios `mains..` are the scratch twins of scenarios `0..mains`.
    pub mains: usize,
    pub backbone: Option<Backbone>,
}

impl Matrix {
    fn new(scs: Vec<Scenario>, backbone: Option<Backbone>) -> Self {
        let mains = scs.len();
        let twins: Vec<Scenario> = match &backbone {
            Some(_) => scs.iter().map(Scenario::scratch_twin).collect(),
            None => Vec::new(),
        };
        Self { scs: scs.into_iter().chain(twins).collect(), mains, backbone }
    }

    /// Whether scenario `s` is fine-tuned from the backbone.
    fn uses_backbone(&self, s: usize) -> bool {
        self.backbone.is_some() && s < self.mains
    }
}

/// One cell of the grid.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// `--pretrained`: the backbone every fine-tuned scenario starts from.
    Pretrain,
    Train {
        scenario: usize,
    },
    Retrain {
        scenario: usize,
    },
    Unlearn {
        scenario: usize,
        method: &'static str,
        seed: u64,
    },
}

impl Cell {
    fn scenario(&self) -> Option<usize> {
        match self {
            Self::Pretrain => None,
            Self::Train { scenario }
            | Self::Retrain { scenario }
            | Self::Unlearn { scenario, .. } => Some(*scenario),
        }
    }

    /// The folder the cell writes (complete once it holds `phase.json`).
    fn folder(&self, m: &Matrix, runs: &Path) -> PathBuf {
        let run = |s: usize| runs.join(&m.scs[s].name);
        match self {
            Self::Pretrain => m.backbone.as_ref().map(|b| b.dir.clone()).unwrap_or_default(),
            Self::Train { scenario } => run(*scenario).join("original"),
            Self::Retrain { scenario } => run(*scenario).join("retrain"),
            Self::Unlearn { scenario, method, seed } => {
                run(*scenario).join(format!("{method}-s{seed}"))
            }
        }
    }

    fn done(&self, m: &Matrix, runs: &Path) -> bool {
        self.folder(m, runs).join("phase.json").is_file()
    }

    fn describe(&self, m: &Matrix) -> String {
        let Some(s) = self.scenario() else {
            return "the backbone (rfa pretrain)".into();
        };
        let name = &m.scs[s].name;
        match self {
            Self::Pretrain => unreachable!("no scenario"),
            Self::Train { .. } => format!("{name}: M0 (rfa train)"),
            Self::Retrain { .. } => format!("{name}: M* (rfa retrain)"),
            Self::Unlearn { method, seed, .. } => format!("{name}: {method}, seed {seed}"),
        }
    }
}

/// The grid: the backbone (`--pretrained`), every scenario's M0 and M*, then every method (that
/// applies, or `only`) × seed, and RFA once on each scratch twin.
pub fn grid(m: &Matrix, seeds: usize, only: &[String]) -> Vec<Cell> {
    let mut cells = Vec::new();
    if m.backbone.is_some() {
        cells.push(Cell::Pretrain);
    }
    for scenario in 0..m.scs.len() {
        cells.push(Cell::Train { scenario });
        cells.push(Cell::Retrain { scenario });
    }
    for (scenario, sc) in m.scs[..m.mains].iter().enumerate() {
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
    for scenario in m.mains..m.scs.len() {
        cells.push(Cell::Unlearn { scenario, method: "rfa", seed: 0 });
    }
    cells
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
    mode: Mode,
) -> Result<()> {
    let root = crate::root();
    let bin = rfa_binary(&root, device)?;
    std::fs::create_dir_all(runs)?;
    let runs = &std::path::absolute(runs)?;
    let backbone = if pretrained { Some(Backbone::plan(&root, task, small, runs)?) } else { None };
    let mut scs = scenarios(&root, &bin, task, small, backbone.as_ref())?;
    apply_sets(&mut scs, sets)?;
    let m = Matrix::new(scs, backbone);
    let cells = grid(&m, seeds, only);
    let config = |sc: &Scenario| -> Result<PathBuf> {
        let p = runs.join(format!("{}.toml", sc.name));
        std::fs::write(&p, toml::to_string_pretty(&sc.config)?)?;
        Ok(p)
    };
    match mode {
        Mode::List => {
            for (i, c) in cells.iter().enumerate() {
                let state = if c.done(&m, runs) { "done" } else { "" };
                println!("{i:>4}  {:<60} {state}", c.describe(&m));
            }
            println!("{} cells", cells.len());
        }
        Mode::Shard { index, count, wait } => {
            // Shards of one array run side by side: what a cell needs may be on its way.
            let wait_for = |i: usize, c: &Cell, need: &Cell| -> Result<()> {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
                while !need.done(&m, runs) && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                }
                if !need.done(&m, runs) {
                    let k = cells.iter().position(|x| x == need).expect("in the grid");
                    bail!(
                        "cell {i} ({}) needs {}, which cell {k} makes: run shard {}/{count} first (or --wait SECONDS for it)",
                        c.describe(&m),
                        need.describe(&m),
                        k % count
                    );
                }
                Ok(())
            };
            for (i, c) in cells.iter().enumerate().filter(|(i, _)| i % count == index) {
                eprintln!("cell {i} (shard {index}/{count}): {}", c.describe(&m));
                let Some(scenario) = c.scenario() else {
                    let b = m.backbone.as_ref().expect("a pretrain cell has a backbone");
                    rfa(&bin, &["pretrain"], &b.config_file, runs, device, &[])?;
                    continue;
                };
                let sc = &m.scs[scenario];
                let dir = runs.join(&sc.name);
                let cfg = config(sc)?;
                match c {
                    Cell::Pretrain => unreachable!("handled above"),
                    Cell::Train { .. } => {
                        if m.uses_backbone(scenario) {
                            wait_for(i, c, &Cell::Pretrain)?;
                        }
                        // M0 does not depend on what is forgotten: another scenario's finished
                        // one, from the same start, is copied (`rfa train` checks its fingerprint).
                        let done = (0..m.scs.len())
                            .filter(|&o| o != scenario && (o < m.mains) == (scenario < m.mains))
                            .find(|&o| Cell::Train { scenario: o }.done(&m, runs));
                        if let Some(o) = done
                            && !dir.join("original").exists()
                        {
                            copy_dir(
                                &Cell::Train { scenario: o }.folder(&m, runs),
                                &dir.join("original"),
                            )?;
                        }
                        rfa(&bin, &["train"], &cfg, runs, device, &[])?;
                    }
                    Cell::Retrain { .. } => {
                        if m.uses_backbone(scenario) {
                            wait_for(i, c, &Cell::Pretrain)?;
                        }
                        rfa(&bin, &["retrain"], &cfg, runs, device, &[])?
                    }
                    Cell::Unlearn { method, seed, .. } => {
                        if c.done(&m, runs) {
                            continue;
                        }
                        wait_for(i, c, &Cell::Train { scenario })?;
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
                .filter(|(_, c)| !c.done(&m, runs))
                .map(|(i, c)| format!("cell {i} ({})", c.describe(&m)))
                .collect();
            if !missing.is_empty() {
                bail!(
                    "{} of {} cells are not done: {}",
                    missing.len(),
                    cells.len(),
                    missing.join("; ")
                );
            }
            let mut reports = Vec::new();
            for sc in &m.scs {
                let cfg = config(sc)?;
                rfa(&bin, &["eval"], &cfg, runs, device, &[])?;
                let report: Value = serde_json::from_str(
                    &std::fs::read_to_string(runs.join(&sc.name).join("report/report.json"))
                        .with_context(|| format!("reading {}'s report", sc.name))?,
                )?;
                reports.push(report);
            }
            for (s, sc) in m.scs[..m.mains].iter().enumerate() {
                let scratch = m.backbone.as_ref().map(|_| &reports[m.mains + s]);
                let dir = runs.join(&sc.name);
                write_results(task, sc, &reports[s], scratch, &dir, small, None, seeds)?;
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

    fn matrix(scs: Vec<Scenario>, backbone: bool) -> Matrix {
        let b = backbone.then(|| Backbone {
            config: toml::Table::new(),
            config_file: "b.toml".into(),
            dir: "runs/b/pretrained".into(),
        });
        Matrix::new(scs, b)
    }

    #[test]
    fn the_grid_trains_first_and_every_cell_is_in_exactly_one_shard() {
        let m = matrix(vec![sc("a", false), sc("b", true)], false);
        let cells = grid(&m, 2, &[]);
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
        assert_eq!(grid(&m, 1, &["rfa".into()]).len(), 4 + 2);
        assert_eq!(parse_shard("2/3").unwrap(), (2, 3));
        for bad in ["3/3", "1", "a/2", "0/0"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pretrained_grid_makes_the_backbone_first_and_rfa_once_on_each_scratch_twin() {
        let m = matrix(vec![sc("a-pretrained", false), sc("b-pretrained", true)], true);
        assert_eq!(m.scs[2].name, "a-scratch");
        assert!(m.uses_backbone(1) && !m.uses_backbone(2));
        let cells = grid(&m, 2, &[]);
        assert_eq!(cells[0], Cell::Pretrain);
        assert_eq!(cells[0].describe(&m), "the backbone (rfa pretrain)");
        // The backbone, M0 and M* of two scenarios and two twins, 18 + 14 method cells, and RFA
        // once on each twin.
        assert_eq!(cells.len(), 1 + 8 + 18 + 14 + 2);
        let twins: Vec<&Cell> = cells.iter().filter(|c| c.scenario() >= Some(2)).collect();
        assert_eq!(twins.len(), 2 * 2 + 2);
        assert!(twins.iter().all(
            |c| !matches!(c, Cell::Unlearn { method, seed, .. } if *method != "rfa" || *seed != 0)
        ));
        let runs = Path::new("runs");
        assert_eq!(Cell::Pretrain.folder(&m, runs), Path::new("runs/b/pretrained"));
        assert_eq!(
            Cell::Unlearn { scenario: 2, method: "rfa", seed: 0 }.folder(&m, runs),
            Path::new("runs/a-scratch/rfa-s0")
        );
    }
}
