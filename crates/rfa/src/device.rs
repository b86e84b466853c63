//! The `--device` (and the benchmark's `--backends`) vocabulary: one parser for every binary.

use std::fmt;
use std::str::FromStr;

/// Which burn backend a command runs on, and which of its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn-ndarray, single-threaded and reproducible to the bit (`cpu`, also `ndarray`).
    Cpu,
    /// burn-flex with threads, SIMD and rfa's fused kernels (`cpu-flex`, also `flex`).
    CpuFlex,
    /// burn-cuda on GPU N (`cuda`, `cuda:N`; the `cuda` cargo feature).
    Cuda(usize),
    /// burn's cubecl backend on wgpu (`wgpu`; the `wgpu` cargo feature): kernel counts, not speed.
    Wgpu,
    /// burn-tch on libtorch's CPU kernels (`tch-cpu`, also `tch`; the `tch` cargo feature).
    TchCpu,
    /// burn-tch on CUDA device N (`tch-cuda`, `tch-cuda:N`; the `tch` cargo feature).
    TchCuda(usize),
}

/// A device name none of [`DeviceSpec`]'s forms match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device `{0}` (cpu, cpu-flex, cuda[:N], wgpu, tch-cpu, tch-cuda[:N])")]
pub struct UnknownDevice(pub String);

impl DeviceSpec {
    /// The cargo feature this device needs, if any.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Self::Cpu | Self::CpuFlex => None,
            Self::Cuda(_) => Some("cuda"),
            Self::Wgpu => Some("wgpu"),
            Self::TchCpu | Self::TchCuda(_) => Some("tch"),
        }
    }

    /// The libtorch device of a `tch` spec.
    #[cfg(feature = "tch")]
    pub fn libtorch(self) -> Option<burn::backend::libtorch::LibTorchDevice> {
        use burn::backend::libtorch::LibTorchDevice;
        match self {
            Self::TchCpu => Some(LibTorchDevice::Cpu),
            Self::TchCuda(n) => Some(LibTorchDevice::Cuda(n)),
            _ => None,
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = UnknownDevice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let index = |rest: &str| rest.parse::<usize>().map_err(|_| UnknownDevice(s.to_string()));
        Ok(match s {
            "cpu" | "ndarray" => Self::Cpu,
            "cpu-flex" | "flex" => Self::CpuFlex,
            "cuda" => Self::Cuda(0),
            "wgpu" => Self::Wgpu,
            "tch-cpu" | "tch" => Self::TchCpu,
            "tch-cuda" => Self::TchCuda(0),
            _ => match (s.strip_prefix("cuda:"), s.strip_prefix("tch-cuda:")) {
                (Some(n), _) => Self::Cuda(index(n)?),
                (_, Some(n)) => Self::TchCuda(index(n)?),
                _ => return Err(UnknownDevice(s.to_string())),
            },
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::CpuFlex => f.write_str("cpu-flex"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Wgpu => f.write_str("wgpu"),
            Self::TchCpu => f.write_str("tch-cpu"),
            Self::TchCuda(n) => write!(f, "tch-cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_vocabularies_parse_to_one_spec() {
        let cases = [
            ("cpu", DeviceSpec::Cpu),
            ("ndarray", DeviceSpec::Cpu),
            ("cpu-flex", DeviceSpec::CpuFlex),
            ("flex", DeviceSpec::CpuFlex),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            ("wgpu", DeviceSpec::Wgpu),
            ("tch", DeviceSpec::TchCpu),
            ("tch-cpu", DeviceSpec::TchCpu),
            ("tch-cuda", DeviceSpec::TchCuda(0)),
            ("tch-cuda:1", DeviceSpec::TchCuda(1)),
        ];
        for (name, spec) in cases {
            assert_eq!(name.parse::<DeviceSpec>(), Ok(spec), "{name}");
            assert_eq!(spec.to_string().parse::<DeviceSpec>(), Ok(spec));
        }
        for bad in ["gpu", "cuda:", "cuda:x", "tch-cuda:-1", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")) && e.contains("cpu-flex"), "{e}");
        }
    }

    #[cfg(feature = "tch")]
    #[test]
    fn tch_specs_name_libtorch_devices() {
        use burn::backend::libtorch::LibTorchDevice;
        assert_eq!(DeviceSpec::TchCpu.libtorch(), Some(LibTorchDevice::Cpu));
        assert_eq!(
            "tch-cuda:3".parse::<DeviceSpec>().unwrap().libtorch(),
            Some(LibTorchDevice::Cuda(3))
        );
        assert_eq!(DeviceSpec::Cuda(0).libtorch(), None);
    }
}
