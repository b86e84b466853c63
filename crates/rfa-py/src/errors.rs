//! rfa's errors as Python exceptions, each carrying the whole message (`context: cause`):
//! a missing file is a `FileNotFoundError`, a bad configuration or data a `ValueError`, a stop
//! asked for by Ctrl-C a `KeyboardInterrupt`, any other failure of a phase a `RuntimeError`.

use pyo3::PyErr;
use pyo3::exceptions::{PyFileNotFoundError, PyKeyboardInterrupt, PyRuntimeError, PyValueError};

/// Where an error came from: reading and checking the input, or running a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Input,
    Phase,
}

/// An error of rfa's, not yet turned into a Python exception (that needs no GIL here, but the
/// stage decides the class).
#[derive(Debug)]
pub struct Failure {
    pub stage: Stage,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn input(error: impl Into<anyhow::Error>) -> Self {
        Self { stage: Stage::Input, error: error.into() }
    }

    pub fn phase(error: impl Into<anyhow::Error>) -> Self {
        Self { stage: Stage::Phase, error: error.into() }
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> PyErr {
        let message = format!("{:#}", f.error);
        let chain = || f.error.chain();
        if chain().any(|c| c.downcast_ref::<rfa::interrupt::Interrupted>().is_some()) {
            return PyKeyboardInterrupt::new_err(message);
        }
        let not_found = std::io::ErrorKind::NotFound;
        let missing = chain().any(|c| {
            c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == not_found)
                || matches!(c.downcast_ref::<rfa_data::DataError>(),
                    Some(rfa_data::DataError::Io { kind, .. }) if *kind == not_found)
        });
        if missing {
            return PyFileNotFoundError::new_err(message);
        }
        match f.stage {
            Stage::Input => PyValueError::new_err(message),
            Stage::Phase => PyRuntimeError::new_err(message),
        }
    }
}
