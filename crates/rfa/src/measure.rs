//! What a phase cost: its wall time, the process's peak RSS and, on backends with a readable
//! allocator, the device's peak memory, measured around the phase and recorded in `phase.json`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Result;
use rfa_models::memory::{DeviceMemory, sample_peak};
use serde::{Deserialize, Serialize};

/// Wall time and peak memory of one phase.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Phase {
    pub seconds: f64,
    /// Peak resident set size during the phase (Linux VmHWM after resetting it), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Peak of the device allocator during the phase, on the GPU backends whose allocator is
    /// readable (burn-cuda: cubecl's), sampled every few milliseconds — a lower bound: MiB held
    /// by tensors, and reserved from the driver (what nvidia-smi sees, less the CUDA context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_device_mib: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_device_reserved_mib: Option<f64>,
    /// Unlearning phases: the first step's wall time (on a GPU it includes compiling every kernel
    /// the step needs, unless the kernel cache holds them) and the median of the other steps'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_step_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_step_seconds: Option<f64>,
}

type DeviceProbe = Box<dyn Fn() -> Option<DeviceMemory> + Send + Sync>;

static DEVICE_MEMORY: OnceLock<DeviceProbe> = OnceLock::new();

/// How often `measure` reads the device allocator: often enough for the peak at the end of each
/// forward pass (steps take tens of milliseconds or more), rarely enough to cost nothing.
pub(crate) const DEVICE_SAMPLE_INTERVAL: Duration = Duration::from_millis(5);

/// Has every later `measure` sample the device allocator through `probe` (`rfa_models::memory`;
/// set once, by `main`, for the backend it chose). Returns false if a probe was already set.
pub fn watch_device_memory(
    probe: impl Fn() -> Option<DeviceMemory> + Send + Sync + 'static,
) -> bool {
    DEVICE_MEMORY.set(Box::new(probe)).is_ok()
}

/// Runs `f`, measuring wall time, the process's peak RSS and, where `watch_device_memory` set a
/// probe, the device allocator's sampled peak over it.
pub fn measure<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Phase)> {
    measure_with(DEVICE_MEMORY.get().map(|p| &**p as &(dyn Fn() -> Option<DeviceMemory> + Sync)), f)
}

fn measure_with<T>(
    probe: Option<&(dyn Fn() -> Option<DeviceMemory> + Sync)>,
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Phase)> {
    // Writing 5 to clear_refs resets the peak-RSS counter (Linux ≥ 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let (v, device) = match probe {
        Some(probe) => {
            let (v, peak) = sample_peak(probe, DEVICE_SAMPLE_INTERVAL, f);
            (v?, (peak.samples > 0).then_some(peak))
        }
        None => (f()?, None),
    };
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    Ok((
        v,
        Phase {
            seconds: t.elapsed().as_secs_f64(),
            peak_rss_mib: peak_rss_mib(),
            peak_device_mib: device.map(|p| mib(p.in_use)),
            peak_device_reserved_mib: device.map(|p| mib(p.reserved)),
            first_step_seconds: None,
            median_step_seconds: None,
        },
    ))
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_record_the_device_peak_when_there_is_a_probe() {
        let readings = std::sync::atomic::AtomicU64::new(0);
        let probe = || {
            let k = readings.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Some(if k == 0 {
                DeviceMemory { in_use: 300 << 20, reserved: 512 << 20 }
            } else {
                DeviceMemory { in_use: 100 << 20, reserved: 1 << 30 }
            })
        };
        let (v, phase) = measure_with(Some(&probe), || {
            while readings.load(std::sync::atomic::Ordering::SeqCst) < 2 {
                std::thread::yield_now();
            }
            Ok(5)
        })
        .unwrap();
        assert_eq!(v, 5);
        assert_eq!(
            (phase.peak_device_mib, phase.peak_device_reserved_mib),
            (Some(300.0), Some(1024.0))
        );
        let json = serde_json::to_string(&phase).unwrap();
        assert!(json.contains("\"peak_device_mib\":300.0"), "{json}");

        let (_, phase) = measure_with(None, || Ok(())).unwrap();
        assert_eq!((phase.peak_device_mib, phase.peak_device_reserved_mib), (None, None));
        let json = serde_json::to_string(&phase).unwrap();
        assert!(!json.contains("device"), "{json}");
        let old: Phase = serde_json::from_str(r#"{"seconds": 1.5, "peak_rss_mib": 20.0}"#).unwrap();
        assert_eq!((old.seconds, old.peak_device_mib), (1.5, None));

        // A failing phase is the phase's error, and the sampler stops with it.
        let err = measure_with(Some(&probe), || -> Result<()> { anyhow::bail!("no gradients") })
            .unwrap_err();
        assert!(err.to_string().contains("no gradients"), "{err}");
        // A probe that reads nothing (no allocator) records nothing.
        let (_, phase) = measure_with(Some(&|| None), || Ok(())).unwrap();
        assert_eq!(phase.peak_device_mib, None);
    }
}
