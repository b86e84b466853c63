//! [`ForeachAdamW`](crate::ForeachAdamW)'s state on the host, and its file: a safetensors file
//! of the moments, with the step count, the settings and the parameters each moment belongs to
//! in its metadata. A checkpoint keeps it so that a resumed training takes exactly the steps an
//! uninterrupted one would have taken.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::tensors::{HostTensor, TensorFile, TensorFileError, write_safetensors};

/// The metadata key that holds the [`Header`]; its presence tells an optimizer state from any
/// other safetensors file.
const FORMAT: &str = "rfa.adamw.v1";

/// Everything but the moments, as one JSON value (floats print as the shortest text that parses
/// back to the same bits).
#[derive(Serialize, Deserialize)]
struct Header {
    steps: i32,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// Each group's parameters, in the order of its moments' values.
    groups: Vec<Vec<ParamSlot>>,
}

/// One parameter of a moment group, in the order its values are concatenated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSlot {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The flat moments of one group of parameters (`None` before the first step).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupState {
    pub params: Vec<ParamSlot>,
    pub exp_avg: Option<HostTensor>,
    pub exp_avg_sq: Option<HostTensor>,
}

/// Everything AdamW carries from one step to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWState {
    /// Steps taken (the bias correction's `t`).
    pub steps: i32,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    pub groups: Vec<GroupState>,
}

fn moment_key(group: usize, moment: &str) -> String {
    format!("groups.{group}.{moment}")
}

impl AdamWState {
    /// Writes the state to `path` (atomically, refusing non-finite moments).
    pub fn save(&self, path: &Path) -> Result<(), TensorFileError> {
        let mut tensors = BTreeMap::new();
        for (i, g) in self.groups.iter().enumerate() {
            for (name, m) in [("exp_avg", &g.exp_avg), ("exp_avg_sq", &g.exp_avg_sq)] {
                if let Some(m) = m {
                    tensors.insert(moment_key(i, name), m.clone());
                }
            }
        }
        let header = Header {
            steps: self.steps,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            groups: self.groups.iter().map(|g| g.params.clone()).collect(),
        };
        let json = serde_json::to_string(&header).map_err(|e| TensorFileError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        // The header as one metadata entry (write_safetensors sorts the header's keys, so the
        // same state gives the same bytes).
        let metadata = HashMap::from([(FORMAT.to_string(), json)]);
        write_safetensors(path, &tensors, Some(metadata))
    }

    /// Reads a state [`AdamWState::save`] wrote; any other file is an error naming the path and
    /// the entry at fault.
    pub fn load(path: &Path) -> Result<Self, TensorFileError> {
        Self::from_file(TensorFile::open(path)?)
    }

    /// [`AdamWState::load`] on a file already read.
    pub fn from_file(mut file: TensorFile) -> Result<Self, TensorFileError> {
        let path = file.path.clone();
        let path = path.as_path();
        let bad = |reason: String| TensorFileError::Format { path: path.to_path_buf(), reason };
        let json = file.metadata.get(FORMAT).ok_or_else(|| {
            bad(format!("metadata `{FORMAT}` is missing (not an rfa optimizer state)"))
        })?;
        let Header { steps, beta_1, beta_2, epsilon, weight_decay, groups: params } =
            serde_json::from_str(json).map_err(|e| bad(format!("metadata `{FORMAT}`: {e}")))?;
        let mut groups = Vec::with_capacity(params.len());
        for (i, params) in params.into_iter().enumerate() {
            let numel = params
                .iter()
                .try_fold(0usize, |n, p| {
                    p.shape
                        .iter()
                        .try_fold(1usize, |a, &d| a.checked_mul(d))
                        .and_then(|k| n.checked_add(k))
                })
                .ok_or_else(|| bad(format!("metadata `groups`: group {i}'s sizes overflow")))?;
            let mut moment = |name: &str| -> Result<Option<HostTensor>, TensorFileError> {
                let key = moment_key(i, name);
                if !file.contains(&key) {
                    return Ok(None);
                }
                file.take(&key, &[numel]).map(Some)
            };
            let (exp_avg, exp_avg_sq) = (moment("exp_avg")?, moment("exp_avg_sq")?);
            if exp_avg.is_some() != exp_avg_sq.is_some() {
                return Err(bad(format!("group {i} holds one moment without the other")));
            }
            groups.push(GroupState { params, exp_avg, exp_avg_sq });
        }
        if let Some(key) = file.tensors.keys().next() {
            return Err(bad(format!("tensor `{key}` belongs to no group")));
        }
        Ok(Self { steps, beta_1, beta_2, epsilon, weight_decay, groups })
    }
}
