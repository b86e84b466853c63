//! A PEFT `adapter_config.json`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let path = std::path::Path::new("adapter_config.json");
        if let Ok(cfg) = lora_core::PeftConfig::parse(text, path) {
            let _ = (cfg.rank_for("encoder.layer.0.attention.query"), cfg.alpha_for("query"));
        }
    }
});
