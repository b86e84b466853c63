//! `cargo xtask …`: project chores.
//!
//! - `cargo xtask test` — the test command: fetches the real MiniLM weights if missing
//!   (scripts/fetch-minilm.sh), then `cargo test --workspace`.
//! - `cargo xtask parity DIR…` — compares our models with a reference fixture directory
//!   (`model/`, optional `adapter/`, `reference.safetensors`), prints the error of every compared
//!   tensor and exits non-zero over tolerance.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rfa_models::parity::{Tolerance, check_dir};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "rfa project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch test assets, then run every test of the workspace.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check fixture directories against our models (CPU, f32).
    Parity {
        /// Fixture directories: model/, optional adapter/, reference.safetensors.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Max abs error allowed for logits and hidden states.
        #[arg(long, default_value_t = 1e-4)]
        tol: f32,
        /// Relative error allowed for the loss and the retain MSE.
        #[arg(long, default_value_t = 1e-5)]
        rel_tol: f32,
        /// Scale --tol by max(1, max |reference|) per tensor (reduced-precision matmuls).
        #[arg(long)]
        scale_by_magnitude: bool,
    },
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
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

fn run() -> Result<bool> {
    match Cli::parse().cmd {
        Cmd::Test { args } => {
            let status =
                Command::new("bash").arg(root().join("scripts/fetch-minilm.sh")).status().context("running scripts/fetch-minilm.sh")?;
            if !status.success() {
                bail!("scripts/fetch-minilm.sh failed: the MiniLM parity test needs the real weights");
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo).current_dir(root()).args(["test", "--workspace"]).args(&args).status()?;
            Ok(status.success())
        }
        Cmd::Parity { dirs, tol, rel_tol, scale_by_magnitude } => {
            type B = burn::backend::NdArray<f32>;
            let device = Default::default();
            let tol = Tolerance { abs: tol, rel: rel_tol, scale_by_magnitude };
            let mut all_ok = true;
            for dir in dirs {
                match check_dir::<B>(&dir, tol, &device) {
                    Ok(report) => {
                        print!("{report}");
                        all_ok &= report.ok();
                    }
                    Err(e) => {
                        eprintln!("{}: error: {e}", dir.display());
                        all_ok = false;
                    }
                }
            }
            println!("{}", if all_ok { "parity: all within tolerance" } else { "parity: FAILED" });
            Ok(all_ok)
        }
    }
}
