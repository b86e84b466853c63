//! A CIFAR-10 binary batch.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rfa_data::images::parse_cifar10_bin(&[("data_batch_1.bin".into(), data.to_vec())]);
});
