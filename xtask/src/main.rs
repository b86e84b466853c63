//! `cargo xtask …`: project chores. xtask is an orchestrator: it links no model code (clap,
//! anyhow and serde_json only) and builds in seconds; what needs the model stack runs the
//! `rfa` or `rfa-bench` binary.
//!
//! - `cargo xtask test` — the test command: fetches the real MiniLM weights if missing
//!   (scripts/fetch-minilm.sh), then `cargo test --workspace`.
//! - `cargo xtask bench [--features F] -- ARGS` — the RFA step, timed (docs/BENCHMARKS.md);
//!   `bench-ops` — single operations, timed; `parity DIR…` — our models against reference
//!   fixtures. Each runs `rfa-bench` (release build) with those arguments.
//! - `cargo xtask reproduce TASK [--small]` — every unlearning method against RFA on one task
//!   (fashion-mnist, cifar10, imdb, eli5), three seeds each; writes docs/RESULTS.md sections.
//! - `cargo xtask crate-graph [--check]` — the workspace's crate dependencies, as docs/design.md
//!   draws them; `--check` fails when the two differ.

mod crate_graph;
mod reproduce;
mod sequential;
mod shard;
mod sweep;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "rfa project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Arguments handed to `rfa-bench`, built with the given cargo features.
#[derive(clap::Args)]
struct BenchArgs {
    /// Cargo features of the `rfa-bench` build (cuda, fusion, autotune, tch, wgpu, wgpu-fusion).
    #[arg(long)]
    features: Option<String>,
    /// The subcommand's own arguments (`cargo run -p rfa-bench -- SUBCOMMAND --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch test assets, then run every test of the workspace.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Time the RFA unlearning step (rfa-bench bench).
    Bench(BenchArgs),
    /// Time the operations of one transformer block alone (rfa-bench bench-ops).
    BenchOps(BenchArgs),
    /// Check fixture directories against our models (rfa-bench parity).
    Parity(BenchArgs),
    /// Run every unlearning method on a task (original and gold standard included) and write
    /// its comparison into docs/RESULTS.md.
    Reproduce {
        /// fashion-mnist, cifar10, imdb or eli5.
        task: String,
        /// The version that finishes within a session on 2 CPU cores.
        #[arg(long)]
        small: bool,
        /// Fine-tune M0 and M* from a backbone rfa pre-trains first (`rfa pretrain`, from
        /// configs/<task>-pretrained.toml), beside the same scenario from scratch.
        #[arg(long)]
        pretrained: bool,
        #[arg(long, default_value_t = 3)]
        seeds: usize,
        /// Only these methods (default: all that apply).
        #[arg(long, value_delimiter = ',')]
        methods: Vec<String>,
        #[arg(long, default_value = "runs/reproduce")]
        runs_dir: PathBuf,
        /// rfa's --device: cpu, cuda[:N], …, or a list (cuda:0,cuda:1) to train and unlearn
        /// data-parallel (built with the `collective` feature).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// fashion-mnist --small: the sweep over classes (`all` or `0,3,7`), each with `--seeds`
        /// run seeds (own M0, M*, split), RFA's defaults against M0, M* and the best baselines.
        #[arg(long, conflicts_with = "random")]
        classes: Option<String>,
        /// fashion-mnist --small: the sweep over random shares in percent (`1,5,10`).
        #[arg(long, value_delimiter = ',')]
        random: Vec<f64>,
        /// Sweeps: the first run seed (seeds `from-seed .. from-seed + seeds`), so that a later
        /// sweep runs on seeds no earlier one has seen.
        #[arg(long, default_value_t = 0)]
        from_seed: u64,
        /// fashion-mnist --small: N deletion requests one after another (`rfa unlearn
        /// --after`), RFA and the two best baselines against M* retrained without all of them.
        #[arg(long, value_name = "N", conflicts_with_all = ["classes", "random"])]
        sequential: Option<usize>,
        /// --sequential: each request's share of D, in percent.
        #[arg(long, default_value_t = 3.0, requires = "sequential")]
        share: f64,
        /// Run only cell I of every N of the matrix's grid (`--list` prints it), for cluster
        /// schedulers (docs/SCALING.md); `--merge` then evaluates and writes the tables.
        #[arg(long, value_name = "I/N", conflicts_with_all = ["list", "merge"])]
        shard: Option<String>,
        /// --shard: seconds a method cell waits for its M0 from another shard running beside it
        /// (0: refuse at once, naming that shard).
        #[arg(long, default_value_t = 0, requires = "shard")]
        wait: u64,
        /// Print the grid of cells (M0, M*, every method × seed), with those done.
        #[arg(long, conflicts_with = "merge")]
        list: bool,
        /// Once every cell is done: evaluate each scenario and write its tables.
        #[arg(long)]
        merge: bool,
        /// Override a field of every scenario's configuration: --set data.max_train=600.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Print the workspace's crate dependencies as docs/design.md draws them; with --check, fail
    /// when docs/design.md's picture differs.
    CrateGraph {
        #[arg(long)]
        check: bool,
    },
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo run --release -p rfa-bench [--features F] -- SUBCOMMAND ARGS`.
fn rfa_bench(subcommand: &str, a: BenchArgs) -> Result<bool> {
    let mut c = cargo();
    c.args(["run", "--quiet", "--release", "-p", "rfa-bench"]);
    if let Some(f) = &a.features {
        c.args(["--features", f]);
    }
    let status = c
        .arg("--")
        .arg(subcommand)
        .args(&a.args)
        .status()
        .context("running cargo run -p rfa-bench")?;
    Ok(status.success())
}

fn run() -> Result<bool> {
    match Cli::parse().cmd {
        Cmd::Test { args } => {
            let status = Command::new("bash")
                .arg(root().join("scripts/fetch-minilm.sh"))
                .status()
                .context("running scripts/fetch-minilm.sh")?;
            if !status.success() {
                bail!(
                    "scripts/fetch-minilm.sh failed: the MiniLM parity test needs the real weights"
                );
            }
            // rfa's data-parallel training (burn's collective operations) is tested too.
            let status = cargo()
                .args(["test", "--workspace", "--features", "rfa/collective"])
                .args(&args)
                .status()?;
            Ok(status.success())
        }
        Cmd::Bench(a) => rfa_bench("bench", a),
        Cmd::BenchOps(a) => rfa_bench("bench-ops", a),
        Cmd::Parity(a) => rfa_bench("parity", a),
        Cmd::Reproduce {
            task,
            small,
            pretrained,
            seeds,
            methods,
            runs_dir,
            device,
            classes,
            random,
            from_seed,
            sequential,
            share,
            shard,
            wait,
            list,
            merge,
            sets,
        } => {
            let mode = match (shard, list, merge) {
                (Some(s), _, _) => {
                    let (index, count) = shard::parse_shard(&s)?;
                    Some(shard::Mode::Shard { index, count, wait })
                }
                (None, true, _) => Some(shard::Mode::List),
                (None, false, true) => Some(shard::Mode::Merge),
                _ => None,
            };
            if let Some(mode) = mode {
                let seeds = seeds.max(1);
                shard::run(
                    &task, small, pretrained, seeds, &methods, &runs_dir, &device, &sets, mode,
                )?;
                return Ok(true);
            }
            if let Some(requests) = sequential {
                if task != "fashion-mnist" || !small || !methods.is_empty() {
                    bail!(
                        "--sequential runs on the embedded Fashion-MNIST subset: `cargo xtask reproduce fashion-mnist --small --sequential 3`"
                    );
                }
                let seeds = from_seed..from_seed + seeds.max(1) as u64;
                sequential::run(requests, share, seeds, &runs_dir, &device)?;
                return Ok(true);
            }
            let sweep = match (classes, random.is_empty()) {
                (Some(c), _) => Some(sweep::Forget::Classes(sweep::parse_classes(&c)?)),
                (None, false) => Some(sweep::Forget::RandomPercents(random)),
                (None, true) => None,
            };
            match sweep {
                Some(forget) => {
                    if task != "fashion-mnist" || !small || !methods.is_empty() {
                        bail!(
                            "--classes / --random sweep the embedded Fashion-MNIST subset: `cargo xtask reproduce fashion-mnist --small --classes all`"
                        );
                    }
                    let seeds = from_seed..from_seed + seeds.max(1) as u64;
                    sweep::run(&forget, seeds, &runs_dir, &device)?;
                }
                None => reproduce::run(
                    &task,
                    small,
                    pretrained,
                    seeds.max(1),
                    &methods,
                    &runs_dir,
                    &device,
                    &sets,
                )?,
            }
            Ok(true)
        }
        Cmd::CrateGraph { check } => crate_graph::run(&root(), check),
    }
}
