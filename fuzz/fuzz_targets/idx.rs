//! An IDX image file and its labels file (gzipped or not). The first byte says where the input
//! splits into the two.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let at = rest.len() * cut as usize / 256;
    let (images, labels) = rest.split_at(at);
    let names: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let _ = rfa_data::images::parse_idx(
        std::path::Path::new("images-idx3-ubyte"),
        images.to_vec(),
        std::path::Path::new("labels-idx1-ubyte"),
        labels.to_vec(),
        names,
    );
});
