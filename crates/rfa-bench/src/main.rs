//! `rfa-bench`: the benchmarks and checks that link the model stack, apart from `cargo xtask`
//! (which drives them): `cargo xtask bench|bench-ops|parity …` runs this binary.
//!
//! - `bench`: the RFA unlearning step, timed (docs/BENCHMARKS.md), one JSON line per
//!   configuration × backend × dtype;
//! - `bench-ops`: the operations of one transformer block alone, timed;
//! - `parity DIR…`: our models against a reference fixture directory (`model/`, optional
//!   `adapter/`, `reference.safetensors`); prints the error of every compared tensor and exits
//!   non-zero over tolerance.
//!
//! Backends are named as `rfa --device` names devices ([`rfa::DeviceSpec`]; the older `ndarray`,
//! `flex` and `tch` are read too).

mod block_ops;
mod step;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rfa::DeviceSpec;
use rfa_models::parity::{Tolerance, check_dir};

/// The `rfa` binary's allocator and policy (`rfa::alloc`: mimalloc, freed memory kept), so that
/// the benchmark times what users run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "rfa-bench", about = "rfa's benchmarks and parity checks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time the RFA unlearning step, one JSON line per configuration × backend × dtype.
    Bench {
        /// Configurations MODEL:LAYERSxWIDTH:HEADS:BATCH:SEQ (MODEL gpt2, bert or vit; BATCH per
        /// set;
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
        /// cpu (ndarray), cpu-flex, cuda[:N] (`--features cuda`), tch-cpu or tch-cuda[:N]
        /// (`--features tch`).
        #[arg(long, default_value = "cpu")]
        backend: String,
    },
}

fn main() -> ExitCode {
    rfa::alloc::keep_freed_memory();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench_one(
    shape: &step::Shape,
    backend: &str,
    dtype: &str,
    steps: usize,
    warmup: usize,
) -> Result<serde_json::Value> {
    use burn::backend::Autodiff;
    let spec: DeviceSpec = backend.parse()?;
    if dtype == "bf16"
        && !matches!(spec, DeviceSpec::Cuda(_) | DeviceSpec::TchCpu | DeviceSpec::TchCuda(_))
    {
        // burn 0.21's CPU backends have no bf16 tensors (ndarray and flex panic on the cast).
        bail!("--dtypes bf16 needs the cuda or tch backend (burn's CPU backends have no bf16)");
    }
    match spec {
        DeviceSpec::Cpu => step::run::<Autodiff<burn::backend::NdArray<f32>>>(
            shape,
            dtype,
            steps,
            warmup,
            "cpu ndarray",
            &Default::default(),
            &|| None,
        ),
        DeviceSpec::CpuFlex => step::run::<Autodiff<burn::backend::Flex>>(
            shape,
            dtype,
            steps,
            warmup,
            "cpu flex",
            &Default::default(),
            &|| None,
        ),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(n) => {
            let device = burn::backend::cuda::CudaDevice::new(n);
            let memory = rfa_models::memory::cuda_allocator(device.clone());
            step::run::<Autodiff<burn::backend::Cuda<f32, i32>>>(
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
        DeviceSpec::Wgpu => {
            let device = burn::backend::wgpu::WgpuDevice::default();
            let memory = rfa_models::memory::wgpu_allocator(device.clone());
            step::run::<Autodiff<burn::backend::Wgpu<f32, i32>>>(
                shape,
                dtype,
                steps,
                warmup,
                if cfg!(feature = "wgpu-fusion") {
                    "wgpu burn-wgpu 0.21, fusion"
                } else {
                    "wgpu burn-wgpu 0.21"
                },
                &device,
                &memory,
            )
        }
        #[cfg(feature = "tch")]
        DeviceSpec::TchCpu | DeviceSpec::TchCuda(_) => {
            let d = backend;
            let device = spec.libtorch().context("a libtorch device")?;
            // PyTorch's caching allocator is not visible through burn: nvidia-smi gives the peak.
            step::run::<Autodiff<burn::backend::LibTorch<f32>>>(
                shape,
                dtype,
                steps,
                warmup,
                &format!("{d} burn-tch 0.21, attention {}", rfa_fused::tch_attention_kernels()),
                &device,
                &|| None,
            )
        }
        #[allow(unreachable_patterns)]
        other => bail!(
            "--backends {other} needs rfa-bench built with --features {}",
            other.feature().unwrap_or_default()
        ),
    }
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
        Cmd::Bench { configs, steps, warmup, backends, dtypes, optimizer, split_taps } => {
            for c in configs {
                let p: Vec<&str> = c.split(':').collect();
                let (lw, num) = (p.get(1).and_then(|x| x.split_once('x')), |i: usize| {
                    p.get(i).and_then(|x| x.parse::<usize>().ok())
                });
                let (Some((l, w)), Some(heads), Some(batch), Some(seq)) =
                    (lw, num(2), num(3), num(4))
                else {
                    bail!("--configs {c}: expected MODEL:LAYERSxWIDTH:HEADS:BATCH:SEQ");
                };
                let shape = step::Shape {
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
            let v: Vec<usize> = shape
                .split(':')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .context("--shape BATCH:SEQ:WIDTH:HEADS")?;
            let [b, t, d, h] = v[..] else {
                bail!("--shape {shape}: expected BATCH:SEQ:WIDTH:HEADS")
            };
            use burn::backend::Autodiff;
            for backend in &backends {
                let rows = match backend.parse::<DeviceSpec>()? {
                    DeviceSpec::Cpu => block_ops::run::<Autodiff<burn::backend::NdArray<f32>>>(
                        b,
                        t,
                        d,
                        h,
                        reps,
                        "cpu ndarray",
                        &Default::default(),
                    ),
                    DeviceSpec::CpuFlex => block_ops::run::<Autodiff<burn::backend::Flex>>(
                        b,
                        t,
                        d,
                        h,
                        reps,
                        "cpu flex",
                        &Default::default(),
                    ),
                    #[cfg(feature = "cuda")]
                    DeviceSpec::Cuda(n) => {
                        block_ops::run::<Autodiff<burn::backend::Cuda<f32, i32>>>(
                            b,
                            t,
                            d,
                            h,
                            reps,
                            "cuda burn-cuda 0.21",
                            &burn::backend::cuda::CudaDevice::new(n),
                        )
                    }
                    #[cfg(feature = "tch")]
                    spec @ (DeviceSpec::TchCpu | DeviceSpec::TchCuda(_)) => {
                        block_ops::run::<Autodiff<burn::backend::LibTorch<f32>>>(
                            b,
                            t,
                            d,
                            h,
                            reps,
                            &format!("{backend} burn-tch 0.21"),
                            &spec.libtorch().context("a libtorch device")?,
                        )
                    }
                    #[allow(unreachable_patterns)]
                    other => bail!(
                        "bench-ops runs on cpu, cpu-flex, cuda[:N] or tch-cpu / tch-cuda[:N], not {other} (in this build: cuda needs --features cuda, tch --features tch)"
                    ),
                };
                rows.iter().for_each(|r| println!("{r}"));
            }
            Ok(true)
        }
        Cmd::Parity { dirs, tol, rel_tol, scale_by_magnitude, backend } => {
            let tol = Tolerance { abs: tol, rel: rel_tol, scale_by_magnitude };
            let all_ok = match backend.parse::<DeviceSpec>()? {
                DeviceSpec::Cpu => {
                    parity::<burn::backend::NdArray<f32>>(&dirs, tol, &Default::default())
                }
                DeviceSpec::CpuFlex => {
                    parity::<burn::backend::Flex>(&dirs, tol, &Default::default())
                }
                #[cfg(feature = "cuda")]
                DeviceSpec::Cuda(n) => parity::<burn::backend::Cuda<f32, i32>>(
                    &dirs,
                    tol,
                    &burn::backend::cuda::CudaDevice::new(n),
                ),
                #[cfg(feature = "tch")]
                spec @ (DeviceSpec::TchCpu | DeviceSpec::TchCuda(_)) => {
                    parity::<burn::backend::LibTorch<f32>>(
                        &dirs,
                        tol,
                        &spec.libtorch().context("a libtorch device")?,
                    )
                }
                #[allow(unreachable_patterns)]
                other => bail!(
                    "parity runs on cpu, cpu-flex, cuda[:N] or tch-cpu / tch-cuda[:N], not {other} (in this build: cuda needs --features cuda, tch --features tch)"
                ),
            };
            println!("{}", if all_ok { "parity: all within tolerance" } else { "parity: FAILED" });
            Ok(all_ok)
        }
    }
}
