//! The `rfa` command: a thin clap layer over the library.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use rfa::config::RunConfig;
use rfa::{DeviceList, DeviceSpec, Run};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rfa",
    version,
    about = "Make pre-trained transformers forget chosen training data, and prove it"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole pipeline on the Fashion-MNIST subset in the repository: train, retrain without
    /// one class, unlearn it with RFA, evaluate all three, write the report.
    Demo(Common),
    /// Pre-train the backbone model.preset describes on the [pretrain] section's source corpus
    /// into runs/<name>/pretrained/ (resumable); a run's model.path then names it.
    Pretrain(Common),
    /// Train the original model M0 on the full training set.
    Train(Common),
    /// Train the gold standard M* on the retain set only.
    Retrain(Common),
    /// Unlearn the forget set from M0, or with --after from the previous request's result.
    Unlearn {
        #[command(flatten)]
        common: Common,
        /// Unlearning method.
        #[arg(long)]
        method: Option<rfa::Method>,
        /// Sign the receipt with this Ed25519 key (`rfa keygen`): receipt.sig beside it.
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
    },
    /// Evaluate M0, M* and the unlearned model; write report/ (report.md, report.json, comparison.md, plots).
    Eval(Common),
    /// Copy the unlearning adapter (PEFT) and the merged model (Hugging Face) to a folder.
    Export {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an unlearning's receipt.json against the files it names (its adapter, merged model
    /// and input model) and, with --prove-id, prove that an id was part of the request.
    Verify {
        /// The receipt (runs/<name>/<method>/receipt.json).
        receipt: PathBuf,
        /// The merged model's folder to check (default: merged/ beside the receipt).
        #[arg(long)]
        model: Option<PathBuf>,
        /// The adapter's folder to check (default: adapter/ beside the receipt).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// A training-set index to prove a member of the forget request (needs --salt).
        #[arg(long, requires = "salt")]
        prove_id: Option<String>,
        /// The request's salt file (receipt.salt, kept apart from the receipt).
        #[arg(long, requires = "prove_id")]
        salt: Option<PathBuf>,
        /// The signer's public key (KEY.pub from `rfa keygen`): the receipt must carry a valid
        /// signature by it.
        #[arg(long, value_name = "KEY.pub")]
        public_key: Option<PathBuf>,
        /// Also read the data set the receipt's configuration names and check that its training
        /// and forgotten samples are the ones the receipt's digests describe.
        #[arg(long)]
        data: bool,
    },
    /// List a chain of requests (request, time, ids, metrics, hashes), checking every link:
    /// Markdown, or JSON with --json.
    Ledger {
        /// A receipt.json, a result folder, or a run folder (its --method result).
        target: PathBuf,
        /// In a run folder, whose result's chain.
        #[arg(long, default_value = "rfa")]
        method: String,
        #[arg(long)]
        json: bool,
    },
    /// Reverse the latest request in force of a chain: a reversal entry in <result>-reverted/
    /// whose model is the one that request started from (its adapter dropped), checked bit for
    /// bit against the request's receipt.
    Revert {
        /// The request's receipt.json, its result folder, or a run folder (its --method result).
        target: PathBuf,
        #[arg(long, default_value = "rfa")]
        method: String,
    },
    /// Write a new Ed25519 key pair for signing receipts: KEY (secret) and KEY.pub.
    Keygen { key: PathBuf },
}

/// The commands that read receipts and open no run.
fn receipts(cmd: &Cmd) -> Option<Result<()>> {
    Some(match cmd {
        Cmd::Verify { receipt, model, adapter, prove_id, salt, public_key, data } => {
            let opts = rfa::receipt::VerifyOptions {
                model: model.clone(),
                adapter: adapter.clone(),
                prove: prove_id.clone().zip(salt.clone()),
                public_key: public_key.clone(),
            };
            verify(receipt, &opts, prove_id).and_then(|()| {
                if *data {
                    rfa::receipt::verify_data(receipt)
                        .with_context(|| format!("{} does not verify", receipt.display()))?;
                    println!("the training and forgotten samples match the receipt's digests");
                }
                Ok(())
            })
        }
        Cmd::Ledger { target, method, json } => ledger(target, method, *json),
        Cmd::Revert { target, method } => (|| {
            let receipt = rfa::chain::resolve(target, method)?;
            let out = rfa::chain::revert(&receipt)?;
            println!("reversed {}: the reversal is {}", receipt.display(), out.display());
            Ok(())
        })(),
        Cmd::Keygen { key } => (|| {
            let public = rfa::signature::keygen(key)?;
            println!(
                "wrote {} (secret: keep it) and {} (public key {public})",
                key.display(),
                rfa::signature::public_path(key).display()
            );
            Ok(())
        })(),
        _ => return None,
    })
}

fn ledger(target: &std::path::Path, method: &str, json: bool) -> Result<()> {
    let receipt = rfa::chain::resolve(target, method)?;
    let links = rfa::chain::walk(&receipt)
        .with_context(|| format!("the chain ending at {}", receipt.display()))?;
    let rows = rfa::chain::ledger(&links)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", rfa::chain::ledger_markdown(&rows));
    }
    Ok(())
}

fn verify(
    receipt: &std::path::Path,
    opts: &rfa::receipt::VerifyOptions,
    prove_id: &Option<String>,
) -> Result<()> {
    let v = rfa::receipt::verify(receipt, opts)
        .with_context(|| format!("{} does not verify", receipt.display()))?;
    println!(
        "{}: {} files match; the request's {} ids give its Merkle root; a chain of {} entr{} checked",
        receipt.display(),
        v.files,
        v.ids,
        v.chain,
        if v.chain == 1 { "y" } else { "ies" }
    );
    if let Some(key) = &v.signed_by {
        println!("signed by the Ed25519 key {key}");
    }
    if !v.input_model_checked {
        println!(
            "the input model ({}) was not found, so it was not checked",
            v.input_model.display()
        );
    }
    if let (Some(id), Some(path)) = (prove_id, &v.proof) {
        println!("id {id} is part of the request; its path to the root:");
        println!("{}", serde_json::to_string_pretty(path)?);
    }
    Ok(())
}

#[derive(Args, Clone)]
struct Common {
    /// Run configuration (TOML). Without it, the demo configuration is used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run name: results go to <runs-dir>/<name>.
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    runs_dir: Option<PathBuf>,
    #[arg(long)]
    seed: Option<u64>,
    /// What to forget: class:NAME|INDEX, random:PERCENT, ids:1,2,3, id-file:PATH.
    #[arg(long)]
    forget: Option<String>,
    /// A request that follows an earlier one: its receipt.json, result folder, or run folder
    /// (the method's result there). Unlearning starts from that result's model, and every
    /// sample the chain forgot leaves Dr, for `retrain` and `eval` too (sets data.after).
    #[arg(long, value_name = "RUN_OR_RECEIPT")]
    after: Option<PathBuf>,
    /// Override any config field: --set train.epochs=5 --set unlearn.targets=query,value
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// cpu (ndarray, deterministic), cpu-flex (threads + SIMD: faster for large models),
    /// cuda[:N] (needs the `cuda` build), or tch-cpu / tch-cuda[:N] (PyTorch's libtorch kernels;
    /// needs the `tch` build).
    /// A comma-separated list (cuda:0,cuda:1) runs training (M0, M*, backbones) and RFA's
    /// unlearning data-parallel, one replica per device (the `collective` build); baselines and
    /// evaluation run on the first.
    #[arg(long, default_value = "cpu")]
    device: DeviceList,
    /// Data-parallel on N devices: GPUs N in a row from --device's, or N replicas on the CPU
    /// (which checks the path but gains no speed). The `collective` build.
    #[arg(long, value_name = "N")]
    devices: Option<usize>,
    /// f32, or bf16 (unlearning on cuda, tch-cpu or tch-cuda): frozen weights in bf16, adapters,
    /// optimizer state and the loss in f32; on tch-* the blocks' interiors in bf16 as under
    /// autocast (sets unlearn.dtype). Training M0 and M* updates every weight and runs in f32.
    #[arg(long)]
    dtype: Option<String>,
    /// Print the resolved configuration (TOML) and exit.
    #[arg(long)]
    print_config: bool,
    /// Train (or retrain) from scratch even where the run folder holds a model made under
    /// another configuration or other data: its folder is replaced.
    #[arg(long)]
    force: bool,
}

impl Common {
    fn device_list(&self) -> Result<DeviceList> {
        Ok(match self.devices {
            Some(n) => self.device.clone().replicated(n)?,
            None => self.device.clone(),
        })
    }

    fn resolve(&self) -> Result<RunConfig> {
        let mut cfg = match &self.config {
            Some(p) => RunConfig::read(p)?,
            None => RunConfig::demo(),
        };
        if let Some(v) = &self.name {
            cfg.name = v.clone();
        }
        if let Some(v) = &self.runs_dir {
            cfg.runs_dir = v.clone();
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = &self.forget {
            cfg.data.forget = v.clone();
        }
        if let Some(v) = &self.after {
            cfg.data.after = Some(v.clone());
        }
        if let Some(v) = &self.dtype {
            cfg.unlearn.dtype = v.clone();
        }
        if !self.sets.is_empty() {
            let values = self
                .sets
                .iter()
                .map(|s| {
                    let (key, value) = s
                        .split_once('=')
                        .with_context(|| format!("--set {s}: expected KEY=VALUE"))?;
                    Ok((key, rfa::config::parse_setting(value)))
                })
                .collect::<Result<Vec<_>>>()?;
            cfg = cfg.with_values(values).context("--set")?;
        }
        Ok(cfg)
    }
}

fn main() {
    rfa::alloc::keep_freed_memory();
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Some(done) = receipts(&cli.cmd) {
        return done;
    }
    let common = match &cli.cmd {
        Cmd::Demo(c) | Cmd::Pretrain(c) | Cmd::Train(c) | Cmd::Retrain(c) | Cmd::Eval(c) => {
            c.clone()
        }
        Cmd::Unlearn { common, .. } | Cmd::Export { common, .. } => common.clone(),
        _ => unreachable!("handled above"),
    };
    if matches!(cli.cmd, Cmd::Pretrain(_) | Cmd::Train(_) | Cmd::Retrain(_))
        && common.dtype.as_deref() == Some("bf16")
    {
        bail!(
            "--dtype bf16 applies to unlearning: training M0 and M* updates every weight and runs in f32"
        );
    }
    if common.print_config {
        print!("{}", common.resolve()?.to_toml());
        return Ok(());
    }
    let devices = common.device_list()?;
    let n = devices.specs().len();
    let described = |backend: &str| match n {
        1 => backend.to_string(),
        _ => format!("{backend}; data-parallel over {devices}"),
    };
    match devices.first() {
        DeviceSpec::Cpu => dispatch::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(
            &cli,
            &common,
            &described("cpu (burn ndarray, f32)"),
            &vec![Default::default(); n],
        ),
        // Threaded GEMM (rayon) and SIMD: 1.3-1.6x faster for GPT-2-small-sized models, slower for
        // the demo's tiny ViT, and not bit-reproducible across thread counts (docs/BENCHMARKS.md).
        DeviceSpec::CpuFlex => dispatch::<burn::backend::Autodiff<burn::backend::Flex>>(
            &cli,
            &common,
            &described("cpu-flex (burn flex, f32, threads + SIMD)"),
            &vec![Default::default(); n],
        ),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(first) => {
            if let Some(dir) = rfa::kernel_cache::enable() {
                eprintln!(
                    "compiled CUDA kernels are cached in {} (RFA_KERNEL_CACHE=off to disable)",
                    dir.display()
                );
            }
            let gpus: Vec<_> = devices
                .specs()
                .iter()
                .map(|d| match d {
                    DeviceSpec::Cuda(k) => burn::backend::cuda::CudaDevice::new(*k),
                    _ => unreachable!("a device list is on one backend"),
                })
                .collect();
            // The report's peak device memory: cubecl's allocator, sampled during each phase.
            rfa::measure::watch_device_memory(rfa_models::memory::cuda_allocator(gpus[0].clone()));
            dispatch::<burn::backend::Autodiff<burn::backend::Cuda<f32, i32>>>(
                &cli,
                &common,
                &described(&format!("cuda:{first} (burn-cuda, f32 with TF32 matmuls)")),
                &gpus,
            )
        }
        #[cfg(feature = "tch")]
        device @ (DeviceSpec::TchCpu | DeviceSpec::TchCuda(_)) => {
            let tch = devices
                .specs()
                .iter()
                .map(|d| d.libtorch().context("a libtorch device"))
                .collect::<Result<Vec<_>>>()?;
            dispatch::<burn::backend::Autodiff<burn::backend::LibTorch<f32>>>(
                &cli,
                &common,
                &described(&format!(
                    "{device} (burn-tch, libtorch {:?}, attention {})",
                    tch[0],
                    rfa_fused::tch_attention_kernels()
                )),
                &tch,
            )
        }
        DeviceSpec::Wgpu => bail!(
            "--device wgpu is the benchmark's (rfa-bench): rfa runs on cpu, cpu-flex, cuda[:N], tch-cpu or tch-cuda[:N]"
        ),
        #[allow(unreachable_patterns)]
        other => {
            let feature = other.feature().unwrap_or_default();
            bail!(
                "--device {other} needs the `{feature}` build: cargo build --release -p rfa --features {feature}"
            )
        }
    }
}

fn dispatch<B: rfa_models::FusedAutodiff>(
    cli: &Cli,
    common: &Common,
    backend: &str,
    devices: &[B::Device],
) -> Result<()> {
    let device = &devices[0];
    let mut cfg = common.resolve()?;
    let mut sign = None;
    if let Cmd::Unlearn { method, sign: key, .. } = &cli.cmd {
        if let Some(m) = method {
            cfg.unlearn.method = *m;
        }
        // Read before any work: a bad key file costs nothing.
        sign = key.as_deref().map(rfa::signature::read_signing_key).transpose()?;
    }
    cfg.unlearn.base_dtype()?;
    if cfg.unlearn.dtype == "bf16"
        && matches!(common.device.first(), DeviceSpec::Cpu | DeviceSpec::CpuFlex)
    {
        // burn's ndarray has no bf16 tensors; flex has them but multiplies in f32 (no speed, only
        // casts).
        bail!(
            "unlearn.dtype = \"bf16\" needs --device cuda, tch-cpu or tch-cuda: burn's ndarray and flex backends have no bf16 products"
        );
    }
    if let Cmd::Pretrain(_) = &cli.cmd {
        let out = Run::pretrain_on::<B>(&cfg, Some(backend), common.force, devices)?;
        eprintln!("pre-trained backbone: {} (name it in model.path)", out.display());
        return Ok(());
    }
    let mut run = Run::open(cfg)?;
    run.backend = Some(backend.to_string());
    run.force = common.force;
    run.sign = sign;
    let rfa::SetSizes { train, forget, retain, test, probe } = run.sizes();
    eprintln!(
        "run `{}` in {}: {:?} on {}, {train} training samples ({forget} to forget, {retain} to retain), {test} test samples (+ {probe} held out as the validation probe), backend {backend}",
        run.cfg.name,
        run.dir.display(),
        run.arch,
        run.cfg.data.dataset,
    );
    match &cli.cmd {
        Cmd::Demo(_) => {
            run.check_unlearn_targets::<B>(device)?;
            run.train_on::<B>(false, devices)?;
            run.train_on::<B>(true, devices)?;
            run.unlearn_on::<B>(devices)?;
            let report = run.eval::<B>(backend, device)?;
            println!("{}", report.markdown());
            eprintln!("report: {}", run.dir.join(rfa::REPORT_DIR).join("report.md").display());
        }
        Cmd::Train(_) => run.train_on::<B>(false, devices)?,
        Cmd::Retrain(_) => run.train_on::<B>(true, devices)?,
        Cmd::Unlearn { .. } => run.unlearn_on::<B>(devices)?,
        Cmd::Eval(_) => {
            let report = run.eval::<B>(backend, device)?;
            println!("{}", report.markdown());
        }
        Cmd::Verify { .. }
        | Cmd::Ledger { .. }
        | Cmd::Revert { .. }
        | Cmd::Keygen { .. }
        | Cmd::Pretrain(_) => {
            unreachable!("handled before a run is opened")
        }
        Cmd::Export { out, .. } => {
            run.export(out)?;
            eprintln!(
                "exported the adapter (PEFT) and the merged model (Hugging Face) to {}",
                out.display()
            );
        }
    }
    Ok(())
}
