//! `rfa.RunConfig`: the run configuration (the CLI's TOML file), built from a file or the demo's,
//! with keyword overrides. A keyword names a field by its dotted key with `__` for the dot
//! (`unlearn__lr=1e-3`), or by its own name where only one section has it (`forget="class:Coat"`
//! is `data.forget`).

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rfa::config::RunConfig;

use crate::errors::Failure;
use crate::values;

#[pyclass(name = "RunConfig", module = "rfa", from_py_object)]
#[derive(Clone)]
pub struct PyRunConfig {
    pub inner: RunConfig,
}

#[pymethods]
impl PyRunConfig {
    /// The demo's configuration (ViT on the Fashion-MNIST subset inside rfa), with overrides.
    #[staticmethod]
    #[pyo3(signature = (**overrides))]
    fn demo(overrides: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Self { inner: RunConfig::demo() }.with(overrides)
    }

    /// A run configuration file (TOML, as `rfa --config` reads), with overrides.
    #[staticmethod]
    #[pyo3(signature = (path, **overrides))]
    fn from_toml(path: PathBuf, overrides: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        if !path.is_file() {
            return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
                "no run configuration at {}",
                path.display()
            )));
        }
        let inner = RunConfig::read(&path).map_err(Failure::input)?;
        Self { inner }.with(overrides)
    }

    /// A copy with the given fields replaced (the same keywords as `demo` and `from_toml`).
    #[pyo3(signature = (**overrides))]
    fn replace(&self, overrides: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        self.clone().with(overrides)
    }

    /// Sets one field by its dotted key (`"unlearn.lr"`), as `--set` does.
    fn set(&mut self, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let v = values::to_toml(key, value)?;
        self.inner = self.inner.with_values([(key, v)]).map_err(Failure::input)?;
        Ok(())
    }

    /// The configuration as TOML (what `rfa --print-config` prints and a run records).
    fn to_toml(&self) -> String {
        self.inner.to_toml()
    }

    /// The configuration as nested dicts.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let json = serde_json::to_value(&self.inner).map_err(Failure::input)?;
        values::to_python(py, &json)
    }

    /// The run's folder: `runs_dir / name`.
    #[getter]
    fn run_dir(&self) -> PathBuf {
        self.inner.runs_dir.join(&self.inner.name)
    }

    #[getter]
    fn name(&self) -> String {
        self.inner.name.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "RunConfig(name={:?}, dataset={:?}, forget={:?}, method={:?})",
            self.inner.name,
            self.inner.data.dataset,
            self.inner.data.forget,
            self.inner.unlearn.method.name()
        )
    }
}

impl PyRunConfig {
    fn with(mut self, overrides: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let Some(overrides) = overrides else { return Ok(self) };
        // JSON rather than TOML: unset optional fields (`model.path`) are there, as null.
        let serde_json::Value::Object(doc) =
            serde_json::to_value(&self.inner).map_err(Failure::input)?
        else {
            unreachable!("a struct serialises to an object")
        };
        let mut pairs = Vec::new();
        for (k, v) in overrides.iter() {
            let name: String = k.extract()?;
            let key = resolve_key(&doc, &name)?;
            pairs.push((key.clone(), values::to_toml(&key, &v)?));
        }
        self.inner = self.inner.with_values(pairs).map_err(Failure::input)?;
        Ok(self)
    }
}

/// The dotted key a keyword names: `section__field`, a top-level field, or a field that only one
/// section has.
fn resolve_key(doc: &serde_json::Map<String, serde_json::Value>, name: &str) -> PyResult<String> {
    if name.contains("__") {
        return Ok(name.replace("__", "."));
    }
    if doc.get(name).is_some_and(|v| !v.is_object()) {
        return Ok(name.to_string());
    }
    let sections: Vec<String> = doc
        .iter()
        .filter(|(_, v)| v.as_object().is_some_and(|t| t.contains_key(name)))
        .map(|(section, _)| format!("{section}.{name}"))
        .collect();
    match sections.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(PyValueError::new_err(format!(
            "unknown setting `{name}` (sections: {}; write section__field)",
            doc.iter()
                .filter(|(_, v)| v.is_object())
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        several => Err(PyValueError::new_err(format!(
            "`{name}` is ambiguous: {} (write section__field, e.g. {})",
            several.join(", "),
            several[0].replace('.', "__")
        ))),
    }
}
