//! rfa from Python: the `rfa` package's native module (`rfa._native`). The API follows the CLI
//! and the run configuration: a [`config::PyRunConfig`] (the TOML file, with keyword overrides),
//! and one function per command (`train`, `retrain`, `unlearn`, `evaluate`, `export`, and the
//! receipt commands `verify`, `ledger`, `revert`, `keygen`), each returning what the command
//! writes as JSON, as a dict.

mod config;
mod errors;
mod phases;
mod receipts;
mod values;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<config::PyRunConfig>()?;
    m.add_function(wrap_pyfunction!(phases::train, m)?)?;
    m.add_function(wrap_pyfunction!(phases::retrain, m)?)?;
    m.add_function(wrap_pyfunction!(phases::unlearn, m)?)?;
    m.add_function(wrap_pyfunction!(phases::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(phases::export, m)?)?;
    m.add_function(wrap_pyfunction!(receipts::verify, m)?)?;
    m.add_function(wrap_pyfunction!(receipts::ledger, m)?)?;
    m.add_function(wrap_pyfunction!(receipts::revert, m)?)?;
    m.add_function(wrap_pyfunction!(receipts::keygen, m)?)?;
    m.add("METHODS", rfa::Method::ALL.iter().map(|m| m.name()).collect::<Vec<_>>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
