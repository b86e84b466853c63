//! An id file, and a `--forget` specification.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = rfa_data::parse_ids(text, std::path::Path::new("forget.txt"));
        let _ = rfa_data::ForgetSpec::parse(text);
    }
});
