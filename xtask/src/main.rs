//! `cargo xtask …`: project chores.
//!
//! - `cargo xtask test` — the test command: fetches the real MiniLM weights if missing
//!   (scripts/fetch-minilm.sh), then `cargo test --workspace`.
//! - `cargo xtask parity DIR…` — compares our models with a reference fixture directory
//!   (`model/`, optional `adapter/`, `reference.safetensors`), prints the error of every compared
//!   tensor and exits non-zero over tolerance.
//! - `cargo xtask bench [--backends ndarray,flex,cuda] [--dtypes f32,bf16]` — the RFA step,
//!   timed (docs/BENCHMARKS.md); `cargo xtask bench-ops` — single operations, timed.
//! - `cargo xtask reproduce TASK [--small]` — every unlearning method against RFA on one task
//!   (fashion-mnist, cifar10, imdb, eli5), three seeds each; writes docs/RESULTS.md sections.

mod bench;
mod ops;
mod reproduce;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rfa_models::parity::{Tolerance, check_dir};

/// The `rfa` binary's allocator and policy (`rfa::alloc`: mimalloc, freed memory kept), so that
/// the benchmark times what users run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Time the RFA unlearning step, one JSON line per configuration × backend × dtype.
    Bench {
        /// Configurations MODEL:LAYERSxWIDTH:HEADS:BATCH:SEQ (MODEL gpt2, bert or vit; BATCH per set;
        /// SEQ = tokens for gpt2/bert, image side for vit).
        #[arg(long, value_delimiter = ',', default_values_t = ["gpt2:12x768:12:4:128".to_string(), "vit:2x64:4:32:28".to_string()])]
        configs: Vec<String>,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Steps after the first (which is reported alone) and before the timed ones.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Backends: ndarray, flex (CPU), cuda[:N] (build with --features cuda), tch, tch-cuda[:N]
        /// (--features tch), wgpu (--features wgpu: kernel counts, not speed).
        #[arg(long, value_delimiter = ',', default_values_t = ["ndarray".to_string(), "flex".to_string()])]
        backends: Vec<String>,
        /// f32, or bf16 (frozen weights in bf16; adapters, optimizer and loss in f32).
        #[arg(long, value_delimiter = ',', default_values_t = ["f32".to_string()])]
        dtypes: Vec<String>,
        /// AdamW over all adapters at once (`foreach`, as `rfa unlearn` runs) or burn's AdamW, one
        /// tensor at a time (`burn`): the same numbers, for comparing time and kernel launches.
        #[arg(long, default_value = "foreach")]
        optimizer: String,
        /// Split the taps and differentiate the objective op by op even on the backends that run
        /// each layer's terms as one node (libtorch, cuda, wgpu): for comparisons.
        #[arg(long)]
        split_taps: bool,
    },
    /// Time the operations of one transformer block alone (GELU, softmax, LayerNorm, add, matmul),
    /// forward and forward + backward: one JSON line per operation.
    BenchOps {
        /// BATCH:SEQ:WIDTH:HEADS (default: the CPU comparison's GPT-2 small shape).
        #[arg(long, default_value = "4:128:768:12")]
        shape: String,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[arg(long, value_delimiter = ',', default_values_t = ["ndarray".to_string(), "flex".to_string()])]
        backends: Vec<String>,
    },
    /// Run every unlearning method on a task (original and gold standard included) and write
    /// its comparison into docs/RESULTS.md.
    Reproduce {
        /// fashion-mnist, cifar10, imdb or eli5.
        task: String,
        /// The version that finishes within a session on 2 CPU cores.
        #[arg(long)]
        small: bool,
        #[arg(long, default_value_t = 3)]
        seeds: usize,
        /// Only these methods (default: all that apply).
        #[arg(long, value_delimiter = ',')]
        methods: Vec<String>,
        #[arg(long, default_value = "runs/reproduce")]
        runs_dir: PathBuf,
        /// cpu or cuda[:N].
        #[arg(long, default_value = "cpu")]
        device: String,
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
        /// ndarray, flex, cuda[:N] (`--features cuda`), tch or tch-cuda[:N] (`--features tch`).
        #[arg(long, default_value = "ndarray")]
        backend: String,
    },
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn main() -> ExitCode {
    // rfa::alloc::keep_freed_memory (xtask drives the rfa binary rather than linking it):
    // mi_option_purge_delay = −1.
    // SAFETY: sets a global option of the global allocator.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench_one(shape: &bench::Shape, backend: &str, dtype: &str, steps: usize, warmup: usize) -> Result<serde_json::Value> {
    use burn::backend::Autodiff;
    if dtype == "bf16" && !(backend.starts_with("cuda") || backend.starts_with("tch")) {
        // burn 0.21's CPU backends have no bf16 tensors (ndarray and flex panic on the cast).
        bail!("--dtypes bf16 needs the cuda or tch backend (burn's CPU backends have no bf16)");
    }
    match backend {
        "ndarray" => {
            bench::run::<Autodiff<burn::backend::NdArray<f32>>>(shape, dtype, steps, warmup, "cpu ndarray", &Default::default(), &|| None)
        }
        "flex" => bench::run::<Autodiff<burn::backend::Flex>>(shape, dtype, steps, warmup, "cpu flex", &Default::default(), &|| None),
        #[cfg(feature = "cuda")]
        d if d.starts_with("cuda") => {
            let n: usize = d.strip_prefix("cuda:").map(str::parse).transpose().context("--backends cuda:N")?.unwrap_or(0);
            let device = burn::backend::cuda::CudaDevice::new(n);
            let memory = rfa_models::memory::cuda_allocator(device.clone());
            bench::run::<Autodiff<burn::backend::Cuda<f32, i32>>>(
                shape,
                dtype,
                steps,
                warmup,
                &format!("cuda:{n} burn-cuda 0.21"),
                &device,
                &memory,
            )
        }
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            let device = burn::backend::wgpu::WgpuDevice::default();
            let memory = rfa_models::memory::wgpu_allocator(device.clone());
            bench::run::<Autodiff<burn::backend::Wgpu<f32, i32>>>(
                shape,
                dtype,
                steps,
                warmup,
                if cfg!(feature = "wgpu-fusion") { "wgpu burn-wgpu 0.21, fusion" } else { "wgpu burn-wgpu 0.21" },
                &device,
                &memory,
            )
        }
        #[cfg(feature = "tch")]
        d if d.starts_with("tch") => {
            let device = tch_device(d)?;
            // PyTorch's caching allocator is not visible through burn: nvidia-smi gives the peak.
            bench::run::<Autodiff<burn::backend::LibTorch<f32>>>(
                shape,
                dtype,
                steps,
                warmup,
                &format!("{d} burn-tch 0.21, attention {}", rfa_fused::tch_attention_kernels()),
                &device,
                &|| None,
            )
        }
        other => bail!(
            "unknown backend `{other}` (ndarray, flex{}{}{})",
            if cfg!(feature = "cuda") { ", cuda[:N]" } else { "; cuda needs `--features cuda`" },
            if cfg!(feature = "tch") { ", tch, tch-cuda[:N]" } else { "" },
            if cfg!(feature = "wgpu") { ", wgpu" } else { "" }
        ),
    }
}

#[cfg(feature = "tch")]
fn tch_device(name: &str) -> Result<burn::backend::libtorch::LibTorchDevice> {
    rfa_models::tch_device(name).unwrap_or_else(|| Err(format!("unknown backend `{name}` (tch, tch-cuda[:N])"))).map_err(anyhow::Error::msg)
}

/// Checks each fixture directory on `B`, prints its report; true when all are within tolerance.
fn parity<B: rfa_models::FusedOps>(dirs: &[PathBuf], tol: Tolerance, device: &B::Device) -> bool {
    let mut all_ok = true;
    for dir in dirs {
        match check_dir::<B>(dir, tol, device) {
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
    all_ok
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
        Cmd::Bench { configs, steps, warmup, backends, dtypes, optimizer, split_taps } => {
            for c in configs {
                let p: Vec<&str> = c.split(':').collect();
                let (lw, num) = (p.get(1).and_then(|x| x.split_once('x')), |i: usize| p.get(i).and_then(|x| x.parse::<usize>().ok()));
                let (Some((l, w)), Some(heads), Some(batch), Some(seq)) = (lw, num(2), num(3), num(4)) else {
                    bail!("--configs {c}: expected MODEL:LAYERSxWIDTH:HEADS:BATCH:SEQ");
                };
                let shape = bench::Shape {
                    model: p[0].to_string(),
                    layers: l.parse()?,
                    width: w.parse()?,
                    heads,
                    batch,
                    seq,
                    optimizer: optimizer.clone(),
                    split_taps,
                };
                for b in &backends {
                    for dt in &dtypes {
                        println!("{}", bench_one(&shape, b, dt, steps, warmup)?);
                    }
                }
            }
            Ok(true)
        }
        Cmd::BenchOps { shape, reps, backends } => {
            let v: Vec<usize> = shape.split(':').map(str::parse).collect::<Result<_, _>>().context("--shape BATCH:SEQ:WIDTH:HEADS")?;
            let [b, t, d, h] = v[..] else { bail!("--shape {shape}: expected BATCH:SEQ:WIDTH:HEADS") };
            use burn::backend::Autodiff;
            for backend in &backends {
                let rows = match backend.as_str() {
                    "ndarray" => ops::run::<Autodiff<burn::backend::NdArray<f32>>>(b, t, d, h, reps, "cpu ndarray", &Default::default()),
                    "flex" => ops::run::<Autodiff<burn::backend::Flex>>(b, t, d, h, reps, "cpu flex", &Default::default()),
                    #[cfg(feature = "cuda")]
                    "cuda" => {
                        ops::run::<Autodiff<burn::backend::Cuda<f32, i32>>>(b, t, d, h, reps, "cuda burn-cuda 0.21", &Default::default())
                    }
                    #[cfg(feature = "tch")]
                    name if name.starts_with("tch") => ops::run::<Autodiff<burn::backend::LibTorch<f32>>>(
                        b,
                        t,
                        d,
                        h,
                        reps,
                        &format!("{name} burn-tch 0.21"),
                        &tch_device(name)?,
                    ),
                    other => bail!("unknown backend `{other}` (ndarray, flex, cuda with --features cuda, tch[-cuda] with --features tch)"),
                };
                rows.iter().for_each(|r| println!("{r}"));
            }
            Ok(true)
        }
        Cmd::Reproduce { task, small, seeds, methods, runs_dir, device } => {
            reproduce::run(&task, small, seeds.max(1), &methods, &runs_dir, &device)?;
            Ok(true)
        }
        Cmd::Parity { dirs, tol, rel_tol, scale_by_magnitude, backend } => {
            let tol = Tolerance { abs: tol, rel: rel_tol, scale_by_magnitude };
            let all_ok = match backend.as_str() {
                "ndarray" => parity::<burn::backend::NdArray<f32>>(&dirs, tol, &Default::default()),
                "flex" => parity::<burn::backend::Flex>(&dirs, tol, &Default::default()),
                #[cfg(feature = "cuda")]
                d if d.starts_with("cuda") => {
                    let n: usize = d.strip_prefix("cuda:").map(str::parse).transpose().context("--backend cuda:N")?.unwrap_or(0);
                    parity::<burn::backend::Cuda<f32, i32>>(&dirs, tol, &burn::backend::cuda::CudaDevice::new(n))
                }
                #[cfg(feature = "tch")]
                d if d.starts_with("tch") => parity::<burn::backend::LibTorch<f32>>(&dirs, tol, &tch_device(d)?),
                other => bail!("unknown backend `{other}` (ndarray, flex, cuda with --features cuda, tch[-cuda] with --features tch)"),
            };
            println!("{}", if all_ok { "parity: all within tolerance" } else { "parity: FAILED" });
            Ok(all_ok)
        }
    }
}
