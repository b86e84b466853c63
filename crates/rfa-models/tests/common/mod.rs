// Shared by the integration tests (each test file includes it as a module).
#![allow(dead_code)]

use std::path::PathBuf;

pub type B = burn::backend::NdArray<f32>;
pub type AB = burn::backend::Autodiff<B>;

pub fn device() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

/// `fixtures/` at the repository root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}
