//! `rfa.train`, `retrain`, `unlearn`, `evaluate`, `export`: the CLI's commands on a
//! `RunConfig`. Each runs in a worker thread with the GIL released, while the calling thread
//! polls Python's signals: Ctrl-C asks the phase to stop before its next step
//! ([`rfa::interrupt`]), waits for it, and raises `KeyboardInterrupt`. Progress bars go to
//! stderr, as in the CLI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use rfa::config::RunConfig;
use rfa::{DeviceSpec, Method, Run};
use rfa_models::FusedAutodiff;

use crate::config::PyRunConfig;
use crate::errors::Failure;
use crate::values;

/// What a call runs.
enum Phase {
    Train,
    Retrain,
    /// With the key that signs the receipt, if any.
    Unlearn(Option<rfa::signature::SigningKey>),
    Evaluate,
}

/// Trains the original model M0 on the whole training set (`runs_dir/name/original/`). Returns
/// `{"dir", "phase", "train_state"}`: the folder, its `phase.json` and `train_state.json`.
#[pyfunction]
#[pyo3(signature = (config, device = "cpu", force = false))]
pub fn train(
    py: Python<'_>,
    config: PyRunConfig,
    device: &str,
    force: bool,
) -> PyResult<Py<PyAny>> {
    call(py, config.inner, Phase::Train, device, force)
}

/// Trains the gold standard M* on the retain set only (`retrain/`); returns as `train` does.
#[pyfunction]
#[pyo3(signature = (config, device = "cpu", force = false))]
pub fn retrain(
    py: Python<'_>,
    config: PyRunConfig,
    device: &str,
    force: bool,
) -> PyResult<Py<PyAny>> {
    call(py, config.inner, Phase::Retrain, device, force)
}

/// Unlearns the forget set from M0 with `method` (default: the configuration's, `rfa`), or
/// from the previous request's result when the configuration has `after`. `sign`: an Ed25519
/// key file (`rfa.keygen`) that signs the receipt. Returns `{"dir", "phase", "log",
/// "receipt"}`: the result's folder (`adapter/`, `merged/`), its `phase.json`,
/// `unlearn_log.json` and `receipt.json`.
#[pyfunction]
#[pyo3(signature = (config, method = None, device = "cpu", sign = None))]
pub fn unlearn(
    py: Python<'_>,
    config: PyRunConfig,
    method: Option<&str>,
    device: &str,
    sign: Option<PathBuf>,
) -> PyResult<Py<PyAny>> {
    let mut cfg = config.inner;
    if let Some(m) = method {
        cfg.unlearn.method =
            m.parse::<Method>().map_err(|e| PyValueError::new_err(e.to_string()))?;
    }
    let key = sign
        .as_deref()
        .map(rfa::signature::read_signing_key)
        .transpose()
        .map_err(Failure::input)?;
    call(py, cfg, Phase::Unlearn(key), device, false)
}

/// Evaluates M0, M* and every unlearned model of the run, writes `report/` and returns
/// `report.json`'s content.
#[pyfunction]
#[pyo3(signature = (config, device = "cpu"))]
pub fn evaluate(py: Python<'_>, config: PyRunConfig, device: &str) -> PyResult<Py<PyAny>> {
    call(py, config.inner, Phase::Evaluate, device, false)
}

/// Copies the run's unlearning result (the PEFT adapter and the merged model) to `out`.
#[pyfunction]
pub fn export(py: Python<'_>, config: PyRunConfig, out: PathBuf) -> PyResult<()> {
    let cfg = config.inner;
    detached(py, move || {
        let run = Run::open(cfg).map_err(Failure::input)?;
        run.export(&out).map_err(Failure::phase)
    })
}

fn call(
    py: Python<'_>,
    cfg: RunConfig,
    phase: Phase,
    device: &str,
    force: bool,
) -> PyResult<Py<PyAny>> {
    let device: DeviceSpec = device.parse().map_err(|e| PyValueError::new_err(format!("{e}")))?;
    let json = detached(py, move || match device {
        DeviceSpec::Cpu => run::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(
            cfg,
            phase,
            "cpu (burn ndarray, f32)",
            &Default::default(),
            force,
        ),
        DeviceSpec::CpuFlex => run::<burn::backend::Autodiff<burn::backend::Flex>>(
            cfg,
            phase,
            "cpu-flex (burn flex, f32, threads + SIMD)",
            &Default::default(),
            force,
        ),
        other => Err(Failure::input(anyhow::anyhow!(
            "device `{other}`: the Python package runs on cpu and cpu-flex; GPU runs use the \
             `rfa` command built with its cargo feature"
        ))),
    })?;
    values::to_python(py, &json)
}

fn run<B: FusedAutodiff>(
    cfg: RunConfig,
    phase: Phase,
    backend: &str,
    device: &B::Device,
    force: bool,
) -> Result<serde_json::Value, Failure> {
    let mut run = Run::open(cfg).map_err(Failure::input)?;
    run.backend = Some(backend.to_string());
    run.force = force;
    let done = |dir: PathBuf, log: &str, key: &str| -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::json!({
            "dir": dir.display().to_string(),
            "phase": read_json(&dir.join(rfa::PHASE_RECORD))?,
            key: read_json(&dir.join(log))?,
        }))
    };
    let result = match phase {
        Phase::Train | Phase::Retrain => {
            let retrain = matches!(phase, Phase::Retrain);
            run.train::<B>(retrain, device).map_err(Failure::phase)?;
            let role = if retrain { rfa::Role::Retrained } else { rfa::Role::Original };
            done(role.dir(&run.dir), rfa::checkpoint::TRAIN_STATE, "train_state")
        }
        Phase::Unlearn(key) => {
            run.sign = key;
            run.unlearn::<B>(device).map_err(Failure::phase)?;
            let role =
                rfa::Role::Unlearned { method: run.cfg.unlearn.method, seed: run.cfg.unlearn.seed };
            let dir = role.dir(&run.dir);
            done(dir.clone(), "unlearn_log.json", "log").and_then(|mut v| {
                v["receipt"] = read_json(&dir.join(rfa::receipt::RECEIPT))?;
                Ok(v)
            })
        }
        Phase::Evaluate => {
            let report = run.eval::<B>(backend, device).map_err(Failure::phase)?;
            serde_json::to_value(&report).context("the report as JSON")
        }
    };
    result.map_err(Failure::phase)
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Runs `work` in a thread with the GIL released; the calling thread checks Python's signals
/// every 50 ms. On Ctrl-C it asks the phase to stop, waits for it and raises the interrupt.
fn detached<T: Send>(
    py: Python<'_>,
    work: impl FnOnce() -> Result<T, Failure> + Send,
) -> PyResult<T> {
    rfa::interrupt::clear();
    py.detach(|| {
        std::thread::scope(|s| {
            let worker = s.spawn(work);
            while !worker.is_finished() {
                std::thread::sleep(Duration::from_millis(50));
                if let Err(signal) = Python::attach(|py| py.check_signals()) {
                    rfa::interrupt::request();
                    let _ = worker.join();
                    rfa::interrupt::clear();
                    return Err(signal);
                }
            }
            match worker.join() {
                Ok(result) => result.map_err(PyErr::from),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic".into());
                    Err(PyRuntimeError::new_err(format!("rfa failed: {what}")))
                }
            }
        })
    })
}
