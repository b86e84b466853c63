//! What a device's allocator holds, read while work runs on it: the benchmark's and the evidence
//! report's device memory. burn has no allocator statistics of its own; cubecl's runtimes (CUDA,
//! wgpu) report bytes in use and reserved, but no peak, so the peak is sampled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A device allocator's state: bytes held by live tensors, bytes it has reserved from the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub in_use: u64,
    pub reserved: u64,
}

/// The largest allocator readings seen while sampling it, and how many readings there were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SampledPeak {
    pub in_use: u64,
    pub reserved: u64,
    pub samples: u64,
}

impl SampledPeak {
    fn add(&mut self, m: &DeviceMemory) {
        self.in_use = self.in_use.max(m.in_use);
        self.reserved = self.reserved.max(m.reserved);
        self.samples += 1;
    }
}

/// Runs `work` while a second thread reads `probe` every `interval` (back to back when zero) and
/// once more after `work` ends; returns `work`'s result and the largest readings. A reading is a
/// round trip to the device's server between two of its operations, so a peak shorter than the
/// interval can be missed: the result is a lower bound of the allocator's true peak (on CUDA
/// nvidia-smi also counts the context and the driver's own memory).
pub fn sample_peak<T>(
    probe: &(dyn Fn() -> Option<DeviceMemory> + Sync),
    interval: Duration,
    work: impl FnOnce() -> T,
) -> (T, SampledPeak) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = SampledPeak::default();
            loop {
                let last = done.load(Ordering::Acquire);
                if let Some(m) = probe() {
                    peak.add(&m);
                }
                if last {
                    return peak;
                }
                if !interval.is_zero() {
                    std::thread::park_timeout(interval);
                }
            }
        });
        let out = work();
        done.store(true, Ordering::Release);
        sampler.thread().unpark();
        (out, sampler.join().expect("memory sampler"))
    })
}

/// A probe of cubecl's allocator on `device` (burn-cuda, burn-wgpu) that reads, from any thread,
/// the allocator of the stream of the thread that creates it: cubecl keeps one allocator per
/// stream and a stream per thread, so a probe read from a sampling thread must name the stream
/// the tensors live on.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn cubecl_allocator<R: cubecl_runtime::runtime::Runtime>(
    device: R::Device,
) -> impl Fn() -> Option<DeviceMemory> + Send + Sync
where
    R::Device: Send + Sync,
{
    let stream = cubecl_common::stream_id::StreamId::current();
    move || {
        let mut client = R::client(&device);
        // Safety: the client only reads that stream's allocator counters (`memory_usage`), in the
        // device server's order like any other request.
        unsafe { client.set_stream(stream) };
        let usage = client.memory_usage().ok()?;
        Some(DeviceMemory { in_use: usage.bytes_in_use, reserved: usage.bytes_reserved })
    }
}

/// A probe of burn-cuda's allocator on `device`, read in the calling thread's stream (see
/// `cubecl_allocator`).
#[cfg(feature = "cuda")]
pub fn cuda_allocator(
    device: burn::backend::cuda::CudaDevice,
) -> impl Fn() -> Option<DeviceMemory> + Send + Sync {
    cubecl_allocator::<cubecl_cuda::CudaRuntime>(device)
}

/// A probe of burn-wgpu's allocator on `device`, read in the calling thread's stream (see
/// `cubecl_allocator`).
#[cfg(feature = "wgpu")]
pub fn wgpu_allocator(
    device: burn::backend::wgpu::WgpuDevice,
) -> impl Fn() -> Option<DeviceMemory> + Send + Sync {
    cubecl_allocator::<cubecl_wgpu::WgpuRuntime>(device)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// The sampler reads while the work runs and at least once after it, keeps the largest in-use
    /// and reserved readings (from different readings too) and stops when the work ends.
    #[test]
    fn sample_peak_keeps_the_largest_readings() {
        for interval in [Duration::ZERO, Duration::from_micros(200)] {
            let n = AtomicU64::new(0);
            // Readings: in use 5, 9, 2, 2, …; reserved 10, 10, 12, 12, … GiB.
            let probe = || {
                let k = n.fetch_add(1, Ordering::SeqCst);
                let in_use = [5u64, 9, 2].get(k as usize).copied().unwrap_or(2);
                let reserved = if k < 2 { 10 } else { 12 };
                Some(DeviceMemory { in_use: in_use << 30, reserved: reserved << 30 })
            };
            let (out, peak) = sample_peak(&probe, interval, || {
                // Until the sampler has read four times.
                while n.load(Ordering::SeqCst) < 4 {
                    std::thread::yield_now();
                }
                7
            });
            assert_eq!(out, 7);
            assert_eq!((peak.in_use, peak.reserved), (9 << 30, 12 << 30));
            assert_eq!(peak.samples, n.load(Ordering::SeqCst));
        }
        // Work that ends at once still gets a reading, and a long interval does not hold the end
        // back; a probe that reads nothing gives no reading.
        let t = std::time::Instant::now();
        let (_, peak) = sample_peak(
            &|| Some(DeviceMemory { in_use: 1, reserved: 2 }),
            Duration::from_secs(60),
            || (),
        );
        assert!(peak.samples >= 1 && peak.in_use == 1 && peak.reserved == 2);
        assert!(t.elapsed() < Duration::from_secs(30));
        let (_, peak) = sample_peak(&|| None, Duration::ZERO, || ());
        assert_eq!((peak.samples, peak.in_use), (0, 0));
    }
}
