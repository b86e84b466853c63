//! Which samples of Df the forget term trains on.
//!
//! A model that never saw Df classifies it as it classifies unseen data: it gets a share of it
//! wrong, the validation probe's error rate. M0 gets less of it wrong; what it memorised are the
//! samples unseen data would not have taught it. Moving *every* forgotten sample to another
//! class's mean (a random request's runner-up target) overshoots: on full-size Fashion-MNIST the
//! adapters lowered the accuracy on Df, Dr and the validation probe alike and the stop rule kept
//! M0 (docs/RESULTS.md). With `unseen-error` the forget term trains only on as many samples of
//! Df as unseen data gets wrong — those M0 is least sure of (lowest probability of the true
//! label, the loss attack's own score) — and leaves the others to the model, so that Df ends up
//! classified like unseen data. The stop rule still measures all of Df.

use std::fmt;

use anyhow::{Result, bail};
use rfa_eval::{Rows, accuracy, true_label_confidence};
use rfa_models::FusedOps;
use rfa_rng::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::engine::{Outputs, logits_only};
use crate::engine_model::EngineModel;
use crate::task::Task;

/// `unlearn.forget_selection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForgetSelection {
    /// Every sample of Df (every run before this option).
    #[default]
    All,
    /// The share of Df that unseen data gets wrong, least confident first.
    UnseenError,
}

impl fmt::Display for ForgetSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::All => "all",
            Self::UnseenError => "unseen-error",
        })
    }
}

/// What `unseen-error` chose, for the log and the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selected {
    /// Samples of Df the forget term trained on.
    pub samples: usize,
    /// Samples of Df.
    pub of: usize,
    /// M0's accuracy on the validation probe (percent): unseen data's.
    pub unseen_accuracy: f64,
    /// M0's accuracy on Df (percent).
    pub forget_accuracy: f64,
    /// The training indices chosen, ascending (in the unlearning's log; the report leaves them
    /// out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<usize>,
}

/// Positions in Df of the samples to train on: as many as unseen data's error rate
/// (`100 − unseen_accuracy` percent, at least one), lowest `confidence` (M0's probability of
/// the true label) first; ties keep Df's order.
pub fn least_confident(confidence: &[f64], unseen_accuracy: f64) -> Vec<usize> {
    let n = confidence.len();
    let error = ((100.0 - unseen_accuracy) / 100.0).clamp(0.0, 1.0);
    let count = ((n as f64 * error).round() as usize).clamp(n.min(1), n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| confidence[a].total_cmp(&confidence[b]).then(a.cmp(&b)));
    order.truncate(count);
    order.sort_unstable();
    order
}

/// Refuses `unseen-error` where it has nothing to read: `probe` is the validation probe's size
/// for a classifier, None for a language model.
pub fn check_selection(selection: ForgetSelection, probe: Option<usize>) -> Result<()> {
    match (selection, probe) {
        (ForgetSelection::All, _) | (_, Some(1..)) => Ok(()),
        (ForgetSelection::UnseenError, None) => bail!(
            "unlearn.forget_selection = \"unseen-error\" reads a classifier's predictions; \
             a language model uses \"all\""
        ),
        (ForgetSelection::UnseenError, Some(_)) => bail!(
            "unlearn.forget_selection = \"unseen-error\" reads M0's accuracy on the validation \
             probe, and data.probe_percent holds none out: raise data.probe_percent or set \
             unlearn.forget_selection = \"all\""
        ),
    }
}

/// `unseen-error`'s choice, from M0's outputs on Df and M0 itself (for the validation probe,
/// which [`check_selection`] has found non-empty).
pub(crate) fn select_unseen_error<B: FusedOps, M: EngineModel<B>>(
    m0: &M,
    task: &Task<M::Data>,
    m0_forget: &Outputs,
    classes: usize,
    device: &B::Device,
) -> Result<Selected> {
    let valid = logits_only(m0, &task.test, &task.probe, device)?;
    let unseen_accuracy =
        accuracy(&Rows::new("validation probe logits", &valid.logits, classes)?, &valid.labels)?;
    let df = Rows::new("M0's logits on Df", &m0_forget.logits, classes)?;
    let forget_accuracy = accuracy(&df, &m0_forget.labels)?;
    let chosen = least_confident(&true_label_confidence(&df, &m0_forget.labels), unseen_accuracy);
    let mut rows: Vec<usize> = chosen.iter().map(|&i| task.split.forget[i]).collect();
    rows.sort_unstable();
    Ok(Selected {
        samples: rows.len(),
        of: task.split.forget.len(),
        unseen_accuracy,
        forget_accuracy,
        rows,
    })
}

/// The forget batches of one pass. Over all of Df: Df shuffled in batches, as always. Over a
/// selection: as many batches as a pass over Df has (so the step budget and the checks'
/// schedule stay those of Df), drawn from the selection reshuffled each time it runs out.
pub fn pass_batches(rows: &[usize], df_len: usize, batch: usize, seed: u64) -> Vec<Vec<usize>> {
    if rows.len() == df_len || rows.is_empty() {
        return rfa_data::batches(rows, batch, true, seed);
    }
    let size = batch.max(1).min(rows.len());
    let count = df_len.div_ceil(batch.max(1));
    let mut stream: Vec<usize> = Vec::new();
    let mut round = 0u64;
    (0..count)
        .map(|_| {
            if stream.len() < size {
                let mut fresh = rows.to_vec();
                SplitMix64::new(seed ^ round.wrapping_mul(0x9e37_79b9)).shuffle(&mut fresh);
                stream.extend(fresh);
                round += 1;
            }
            stream.drain(..size).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_confident_takes_unseen_datas_error_share_lowest_first() {
        let conf = [0.9, 0.2, 0.99, 0.5, 0.1, 0.95, 0.8, 0.97, 0.6, 0.3];
        // Unseen data is 70 % right: the 3 least confident of 10.
        assert_eq!(least_confident(&conf, 70.0), vec![1, 4, 9]);
        assert_eq!(least_confident(&conf, 100.0), vec![4], "at least one");
        assert_eq!(least_confident(&conf, 0.0).len(), 10);
        assert!(least_confident(&[], 50.0).is_empty());
        // Ties keep Df's order.
        assert_eq!(least_confident(&[0.5, 0.5, 0.5, 0.9], 50.0), vec![0, 1]);
    }

    #[test]
    fn a_pass_over_a_selection_has_as_many_batches_as_one_over_df() {
        let df: Vec<usize> = (100..200).collect();
        assert_eq!(pass_batches(&df, 100, 32, 7), rfa_data::batches(&df, 32, true, 7));
        let sel = [103, 150, 177, 101, 120];
        let b = pass_batches(&sel, 100, 32, 7);
        assert_eq!(b.len(), 4, "ceil(100 / 32)");
        assert!(b.iter().all(|x| x.len() == 5), "{b:?}");
        for x in &b {
            let mut s = x.clone();
            s.sort_unstable();
            assert_eq!(s, vec![101, 103, 120, 150, 177], "each batch one shuffle of the selection");
        }
        let sel: Vec<usize> = (0..40).collect();
        let b = pass_batches(&sel, 100, 32, 1);
        assert_eq!(b.len(), 4);
        assert!(b.iter().all(|x| x.len() == 32));
        let mut seen = b.concat();
        seen.truncate(40);
        seen.sort_unstable();
        assert_eq!(seen, sel, "the first 40 draws cover the selection once");
        assert_ne!(b, pass_batches(&sel, 100, 32, 2), "the seed shuffles");
    }
}
