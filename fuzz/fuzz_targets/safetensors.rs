//! A `.safetensors` file (model, adapter, optimizer state): an error naming the file, or tensors.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::PathBuf::from("fuzz.safetensors");
    if let Ok(file) = lora_core::TensorFile::from_bytes(data, path) {
        let _ = lora_core::AdamWState::from_file(file);
    }
});
