//! Where the CUDA build keeps compiled kernels between runs.
//!
//! burn-cuda compiles every kernel at run time (cubecl → CUDA C++ → NVRTC → PTX). Measured on an
//! H100 (docs/BENCHMARKS.md): the first RFA step of GPT-2 small compiles 70 kernels and takes
//! 7.0 s; with those kernels in cubecl's persistent PTX cache, a new process's first step takes
//! 0.20 s (steady state: 0.19 s). cubecl keeps no cache unless a `cubecl.toml` asks for one, so
//! the `rfa` binary turns it on, in a per-user directory, unless the user configured cubecl
//! themselves. A build with cubecl's autotune (feature `autotune`) keeps its per-shape kernel
//! choices in the `autotune` folder beneath, so that only the first run pays for the timing.

use std::path::{Path, PathBuf};

/// The files cubecl reads its configuration from, in the working directory or any parent.
const CUBECL_CONFIG_FILES: [&str; 4] = ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"];

/// The kernel cache directory for this process, or `None` to leave cubecl as it is:
/// `RFA_KERNEL_CACHE=off` disables it, `RFA_KERNEL_CACHE=DIR` names it; otherwise
/// `$XDG_CACHE_HOME/rfa/cubecl` (else `~/.cache/rfa/cubecl`) — unless a cubecl configuration file
/// exists above `cwd`, which then decides.
pub fn cache_dir(cwd: &Path, env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    match env("RFA_KERNEL_CACHE").as_deref() {
        Some("off") => return None,
        Some(dir) if !dir.is_empty() => return Some(PathBuf::from(dir)),
        _ => {}
    }
    if cwd.ancestors().any(|d| CUBECL_CONFIG_FILES.iter().any(|f| d.join(f).is_file())) {
        return None;
    }
    let base = env("XDG_CACHE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("rfa").join("cubecl"))
}

/// Turns cubecl's persistent PTX cache on (see [`cache_dir`]) before any CUDA work. cubecl's
/// environment variables (`CUBECL_DEBUG_LOG`, …) keep working.
#[cfg(feature = "cuda")]
pub fn enable() -> Option<PathBuf> {
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
    let dir = cache_dir(&std::env::current_dir().ok()?, |k| std::env::var(k).ok())?;
    let mut cfg = CubeClRuntimeConfig::default();
    cfg.compilation.cache = Some(CacheConfig::File(dir.clone()));
    // A folder apart, so that the tuning results can be dropped without the compiled kernels.
    cfg.autotune.cache = CacheConfig::File(dir.join("autotune"));
    CubeClRuntimeConfig::set(cfg.override_from_env());
    Some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn the_cache_goes_to_the_users_cache_directory_unless_told_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = tmp.path().join("a/b");
        std::fs::create_dir_all(&cwd).unwrap();
        assert_eq!(
            cache_dir(&cwd, env(&[("HOME", "/home/u")])),
            Some(PathBuf::from("/home/u/.cache/rfa/cubecl"))
        );
        assert_eq!(
            cache_dir(&cwd, env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/c")])),
            Some(PathBuf::from("/c/rfa/cubecl"))
        );
        assert_eq!(
            cache_dir(&cwd, env(&[("HOME", "/home/u"), ("RFA_KERNEL_CACHE", "/k")])),
            Some(PathBuf::from("/k"))
        );
        assert_eq!(cache_dir(&cwd, env(&[("HOME", "/home/u"), ("RFA_KERNEL_CACHE", "off")])), None);
        assert_eq!(cache_dir(&cwd, env(&[])), None, "no home, no cache");
        // A cubecl configuration above the working directory decides for itself.
        std::fs::write(tmp.path().join("a/cubecl.toml"), "").unwrap();
        assert_eq!(cache_dir(&cwd, env(&[("HOME", "/home/u")])), None);
        assert_eq!(
            cache_dir(&cwd, env(&[("HOME", "/home/u"), ("RFA_KERNEL_CACHE", "/k")])),
            Some(PathBuf::from("/k"))
        );
    }
}

/// The `cubecl.toml` that `scripts/device-run.sh` writes for each benchmark row must be one that
/// cubecl accepts: cubecl panics on a file it cannot read, which would lose a GPU session's row.
#[cfg(all(test, feature = "cuda"))]
mod device_script {
    #[test]
    fn the_device_scripts_cubecl_configuration_parses() {
        let script = include_str!("../../../scripts/device-run.sh");
        let mut sections = Vec::new();
        let mut lines = script.lines();
        while let Some(line) = lines.next() {
            if line.contains("cubecl.toml\" <<EOF") {
                sections.push(
                    lines.by_ref().take_while(|l| *l != "EOF").collect::<Vec<_>>().join("\n"),
                );
            }
        }
        assert_eq!(sections.len(), 2, "the row's configuration and the profiler's section");
        let text = sections
            .join("\n")
            .replace("$cache", "/tmp/c")
            .replace("$tune_cache", "/tmp/t")
            .replace("$out", "/tmp/o")
            .replace("$name", "row");
        let cfg: cubecl_runtime::config::CubeClRuntimeConfig =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let dbg = format!("{cfg:?}");
        for expected in [
            "/tmp/c",
            "/tmp/t",
            "/tmp/o/bench/row.compile.log",
            "/tmp/o/bench/row.autotune.log",
            "/tmp/o/bench/row.profile.log",
        ] {
            assert!(dbg.contains(expected), "{expected} missing from {dbg}");
        }
    }
}
