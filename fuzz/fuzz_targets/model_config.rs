//! A model's `config.json`: every check loading makes before allocating.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = rfa_models::config::check_config_text(text, std::path::Path::new("config.json"));
    }
});
