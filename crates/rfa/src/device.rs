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

/// `--device a,b,…` (and `--devices N`): the devices of a data-parallel training, one replica
/// each, all on one backend. A name may repeat: two replicas on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(Vec<DeviceSpec>);

/// A `--device` list or `--devices` count that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceListError {
    #[error(transparent)]
    Unknown(#[from] UnknownDevice),
    #[error("--device {0}: the devices of one run must be on one backend")]
    MixedBackends(String),
    #[error("--devices {asked} with --device {listed}: give a list or a count, not both")]
    ListAndCount { listed: String, asked: usize },
    #[error("--devices 0: at least one device")]
    NoDevices,
    #[error("--devices {0}: {1} has one device")]
    OneDeviceBackend(usize, DeviceSpec),
}

impl DeviceSpec {
    /// The backend's name, the same for every device of it.
    fn backend(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::CpuFlex => "cpu-flex",
            Self::Cuda(_) => "cuda",
            Self::Wgpu => "wgpu",
            Self::TchCpu | Self::TchCuda(_) => "tch",
        }
    }
}

impl DeviceList {
    /// The lead device: the one that builds, evaluates and saves.
    pub fn first(&self) -> DeviceSpec {
        self.0[0]
    }

    pub fn specs(&self) -> &[DeviceSpec] {
        &self.0
    }

    /// `--devices N` on one named device: GPUs N in a row from the one named (`cuda:2` → 2, 3,
    /// …); on the CPU backends N replicas of the one CPU, which checks the data-parallel path
    /// but gains no speed.
    pub fn replicated(self, count: usize) -> Result<Self, DeviceListError> {
        if count == 0 {
            return Err(DeviceListError::NoDevices);
        }
        if self.0.len() > 1 {
            return Err(DeviceListError::ListAndCount { listed: self.to_string(), asked: count });
        }
        let first = self.first();
        let specs = (0..count)
            .map(|k| match first {
                DeviceSpec::Cuda(n) => Ok(DeviceSpec::Cuda(n + k)),
                DeviceSpec::TchCuda(n) => Ok(DeviceSpec::TchCuda(n + k)),
                DeviceSpec::Cpu | DeviceSpec::CpuFlex | DeviceSpec::TchCpu => Ok(first),
                DeviceSpec::Wgpu if count == 1 => Ok(first),
                DeviceSpec::Wgpu => Err(DeviceListError::OneDeviceBackend(count, first)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(specs))
    }
}

impl FromStr for DeviceList {
    type Err = DeviceListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let specs = s.split(',').map(str::parse).collect::<Result<Vec<DeviceSpec>, _>>()?;
        if specs.iter().any(|d| d.backend() != specs[0].backend()) {
            return Err(DeviceListError::MixedBackends(s.to_string()));
        }
        Ok(Self(specs))
    }
}

impl fmt::Display for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&names.join(","))
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

    #[test]
    fn lists_name_one_backend_and_counts_expand_one_device() {
        let list: DeviceList = "cuda:0,cuda:1".parse().unwrap();
        assert_eq!(list.specs(), [DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)]);
        assert_eq!(list.to_string().parse::<DeviceList>().unwrap(), list);
        let same: DeviceList = "cuda:0,cuda:0".parse().unwrap();
        assert_eq!(same.specs(), [DeviceSpec::Cuda(0); 2], "two replicas on one GPU");
        assert_eq!("cpu".parse::<DeviceList>().unwrap().specs(), [DeviceSpec::Cpu]);
        let e = "cuda:0,tch-cuda:1".parse::<DeviceList>().unwrap_err().to_string();
        assert!(e.contains("one backend") && e.contains("cuda:0,tch-cuda:1"), "{e}");
        let e = "cpu,gpu".parse::<DeviceList>().unwrap_err().to_string();
        assert!(e.contains("`gpu`"), "{e}");

        let one = |s: &str| s.parse::<DeviceList>().unwrap();
        assert_eq!(one("cuda:2").replicated(3).unwrap(), one("cuda:2,cuda:3,cuda:4"));
        assert_eq!(one("tch-cuda").replicated(2).unwrap(), one("tch-cuda:0,tch-cuda:1"));
        assert_eq!(one("cpu").replicated(2).unwrap(), one("cpu,cpu"));
        assert_eq!(one("cpu").replicated(1).unwrap(), one("cpu"));
        assert!(matches!(one("cpu").replicated(0), Err(DeviceListError::NoDevices)));
        assert!(matches!(one("wgpu").replicated(2), Err(DeviceListError::OneDeviceBackend(2, _))));
        let e = one("cuda:0,cuda:1").replicated(2).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
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
