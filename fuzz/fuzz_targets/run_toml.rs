//! A run configuration (TOML), read and checked as `rfa --config` does before any work.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = rfa::config::RunConfig::parse(text, std::path::Path::new("run.toml")) {
            let _ = cfg.validate();
        }
    }
});
