//! `rfa.verify`, `rfa.ledger`, `rfa.revert`, `rfa.keygen`: the CLI's receipt commands. They
//! read and hash files only; a mismatch is a `ValueError` naming the file.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::errors::Failure;
use crate::values;

/// Checks a receipt (`receipt.json`) and the chain behind it against the files they name, its
/// signature if it has one (by `public_key`, a `.pub` file, when given), proves `prove_id`
/// with `salt`, and with `data=True` re-reads the data set and checks its digests. Returns
/// `{"files", "ids", "chain", "input_model_checked", "signed_by", "proof"}`.
#[pyfunction]
#[pyo3(signature = (receipt, model = None, adapter = None, prove_id = None, salt = None, public_key = None, data = false))]
#[allow(clippy::too_many_arguments)]
pub fn verify(
    py: Python<'_>,
    receipt: PathBuf,
    model: Option<PathBuf>,
    adapter: Option<PathBuf>,
    prove_id: Option<String>,
    salt: Option<PathBuf>,
    public_key: Option<PathBuf>,
    data: bool,
) -> PyResult<Py<PyAny>> {
    if prove_id.is_some() != salt.is_some() {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "prove_id and salt come together: an id is proven with its request's salt",
        ));
    }
    let opts =
        rfa::receipt::VerifyOptions { model, adapter, prove: prove_id.zip(salt), public_key };
    let v = py
        .detach(|| {
            let v = rfa::receipt::verify(&receipt, &opts)?;
            if data {
                rfa::receipt::verify_data(&receipt)?;
            }
            anyhow::Ok(v)
        })
        .map_err(Failure::input)?;
    let json = serde_json::json!({
        "files": v.files,
        "ids": v.ids,
        "chain": v.chain,
        "input_model": v.input_model.display().to_string(),
        "input_model_checked": v.input_model_checked,
        "signed_by": v.signed_by,
        "proof": v.proof,
    });
    values::to_python(py, &json)
}

/// The chain of requests that ends at `target` (a receipt, a result folder, or a run folder
/// and its `method`'s result), every link checked: a list of dicts, oldest first.
#[pyfunction]
#[pyo3(signature = (target, method = "rfa"))]
pub fn ledger(py: Python<'_>, target: PathBuf, method: &str) -> PyResult<Py<PyAny>> {
    let rows = py
        .detach(|| {
            let receipt = rfa::chain::resolve(&target, method)?;
            let links = rfa::chain::walk(&receipt)?;
            anyhow::Ok(serde_json::to_value(rfa::chain::ledger(&links)?)?)
        })
        .map_err(Failure::input)?;
    values::to_python(py, &rows)
}

/// Reverses the latest request in force of the chain that ends at `target`; returns the
/// reversal's receipt path (`<result>-reverted/receipt.json`).
#[pyfunction]
#[pyo3(signature = (target, method = "rfa"))]
pub fn revert(py: Python<'_>, target: PathBuf, method: &str) -> PyResult<String> {
    py.detach(|| {
        let receipt = rfa::chain::resolve(&target, method)?;
        anyhow::Ok(rfa::chain::revert(&receipt)?.display().to_string())
    })
    .map_err(|e| Failure::input(e).into())
}

/// Writes a new Ed25519 key pair, `key` (secret) and `key.pub`; returns the public key (hex).
#[pyfunction]
pub fn keygen(key: PathBuf) -> PyResult<String> {
    rfa::signature::keygen(&key).map_err(|e| Failure::input(e).into())
}
