//! RFA's steps over Df, on one device or data-parallel ([`crate::data_parallel`]). Each replica
//! takes a share of every forget batch and of the retain batch paired with it; each term's mean
//! weighs by the share's part of the batch's terms (tokens, or rows), so the summed gradients
//! are those of one device on the whole batch. The stop rule's checks run on the lead, which
//! tells the others when to stop.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use indicatif::ProgressBar;
use lora_core::ForeachAdamW;
use rfa_loss::{RfaObjective, SplitTaps, Targets};
use rfa_models::FusedAutodiff;

use crate::config::UnlearnConfig;
use crate::confusable::RetainSampler;
use crate::data_parallel::{Replica, ReplicaStopped};
use crate::engine::{StepLog, bar, scalar};
use crate::engine_model::{EngineModel, task_loss_terms};
use crate::forget_selection::pass_batches;
use crate::probe::{CheckSchedule, Checked, Verdict};
use crate::task::Task;
use crate::token_targets::token_ids;

/// What every replica of one unlearning shares.
pub(crate) struct StepPlan<'a, D> {
    pub task: &'a Task<D>,
    pub unlearn_cfg: &'a UnlearnConfig,
    pub objective: &'a RfaObjective,
    /// Each forget sample's row in a by-class target table.
    pub target_class: &'a HashMap<usize, usize>,
    /// The samples of Df the forget term trains on (`unlearn.forget_selection`).
    pub forget_rows: &'a [usize],
    pub cls_only: bool,
    pub task_weight: f64,
    pub seed: u64,
    pub schedule: CheckSchedule,
}

/// What a replica has of its own: its model, the targets on its device, and its retain sampler
/// (a clone of the lead's, so every replica draws the same retain batches).
pub(crate) struct ReplicaState<B: Backend, M> {
    pub model: M,
    pub targets: Targets<B>,
    pub sampler: RetainSampler,
}

/// The lead's stop rule: the verdict on the model after a step.
pub(crate) type StopCheck<'a, M> = dyn FnMut(&M, usize) -> Result<Checked> + 'a;

/// Where one replica's steps ended.
pub(crate) struct Stepped<M> {
    pub model: M,
    pub steps: Vec<StepLog>,
    pub verdict: Verdict,
}

/// A replicated step: this replica's weighted loss and the batch's values for the log.
struct SharedStep<B: Backend> {
    loss: Result<Tensor<B, 1>>,
    total: f64,
    retain: f64,
    forget: f64,
}

/// The rows of one replica's share of a step's batches (training indices).
struct ShareRows<'r> {
    retain: &'r [usize],
    forget: &'r [usize],
}

/// One replica's terms of a step, each a mean over its own share.
struct ShareTerms<B: Backend> {
    retain: Tensor<B, 1>,
    forget: Tensor<B, 1>,
    /// `retain_cls_weight`'s term: the retain rows' first tokens.
    first_tokens: Option<Tensor<B, 1>>,
    /// `retain_task_weight`'s term: the task loss on the retain rows.
    task: Option<Tensor<B, 1>>,
    /// The step's loss as one device computes it (the terms above, weighted).
    total: Tensor<B, 1>,
    /// Terms each mean averages: retain tokens, forget tokens, retain rows, task terms (only
    /// when replicas weigh their shares).
    counts: Option<[f64; 4]>,
}

impl<D: crate::engine_model::Samples> StepPlan<'_, D> {
    /// Up to `unlearn.epochs` passes over Df on one replica; `check` on the lead only.
    pub fn run<B, M>(
        &self,
        replica: &Replica<B>,
        state: ReplicaState<B, M>,
        mut check: Option<&mut StopCheck<M>>,
    ) -> Result<Stepped<M>>
    where
        B: FusedAutodiff,
        M: EngineModel<B, Data = D> + burn::module::AutodiffModule<B>,
    {
        let ReplicaState { mut model, targets, mut sampler } = state;
        let cfg = self.unlearn_cfg;
        let df_len = self.task.split.forget.len();
        let pass = |epoch: usize| {
            let seed = self.seed.wrapping_add(31 * epoch as u64 + 1);
            pass_batches(self.forget_rows, df_len, cfg.batch_size, seed)
        };
        let pass_len: usize = pass(0).iter().map(Vec::len).sum();
        let mut optim = ForeachAdamW::<B>::new(cfg.weight_decay as f32, 1e-8);
        let mut steps = Vec::new();
        let pb = if replica.is_lead() {
            bar((pass_len * cfg.epochs) as u64, "unlearn")
        } else {
            ProgressBar::hidden()
        };
        let started = Instant::now();
        let mut seen = 0usize;
        let mut verdict = Verdict::Continue;
        // λ as the stop rule's checks steer it (`unlearn.balance`), the same on every replica.
        let mut lambda = self.objective.lambda;
        'epochs: for epoch in 0..cfg.epochs {
            for fb in pass(epoch) {
                let step_start = Instant::now();
                let rb = sampler.batch(fb.len());
                let (rs, fs) = (replica.share(&rb), replica.share(&fb));
                let computed = crate::interrupt::check("unlearning")
                    .map_err(anyhow::Error::from)
                    .and_then(|()| {
                        let count = !replica.is_alone();
                        let rows = ShareRows { retain: rs.rows, forget: fs.rows };
                        self.share_terms(&model, &targets, lambda, rows, count, replica.device())
                    });
                let (loss, tv, rv, fv) = if replica.is_alone() {
                    match computed {
                        Ok(t) => {
                            let (tv, rv, fv) =
                                (scalar(t.total.clone()), scalar(t.retain), scalar(t.forget));
                            (Ok(t.total), tv, rv, fv)
                        }
                        Err(e) => (Err(e), 0.0, 0.0, 0.0),
                    }
                } else {
                    let s = self.shared_step(replica, computed, lambda, rs.counts)?;
                    (s.loss, s.total, s.retain, s.forget)
                };
                let loss = match loss {
                    Ok(l) => l,
                    Err(e) => {
                        pb.abandon();
                        return Err(e);
                    }
                };
                if !tv.is_finite() {
                    pb.abandon();
                    bail!(
                        "RFA: the loss became {tv} at step {} (retain term {rv}, forget term {fv}); \
                         the adapters diverged: lower unlearn.lr (now {}) or unlearn.lambda (now {}, \
                         {lambda} at this step); nothing was written",
                        steps.len(),
                        cfg.lr,
                        cfg.lambda
                    );
                }
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(cfg.lr, model, replica.gradients(grads)?)?;
                steps.push(StepLog::after(steps.len(), [tv, rv, fv], step_start));
                pb.inc(fb.len() as u64);
                seen += rb.len() + fb.len();
                pb.set_message(format!(
                    "retain {rv:.4} forget {fv:.4} {:.0} samples/s",
                    seen as f64 / started.elapsed().as_secs_f64()
                ));
                if self.schedule.is_check(steps.len()) {
                    let checked = check.as_mut().map(|c| c(&model, steps.len()));
                    let stop = matches!(checked, Some(Ok(Checked { verdict: Verdict::Stop, .. })));
                    let failed = matches!(checked, Some(Err(_)));
                    // Only the lead checks: the others add nothing to its λ scale.
                    let scale = match &checked {
                        Some(Ok(c)) => c.lambda_scale,
                        _ => 0.0,
                    };
                    let [stop, failures, scale] =
                        replica.sum([stop as u8 as f64, failed as u8 as f64, scale])?;
                    lambda = self.objective.lambda * scale;
                    if let Some(Err(e)) = checked {
                        return Err(e);
                    }
                    if failures > 0.0 {
                        return Err(ReplicaStopped.into());
                    }
                    if stop > 0.0 {
                        verdict = Verdict::Stop;
                        break 'epochs;
                    }
                }
            }
        }
        pb.finish();
        Ok(Stepped { model, steps, verdict })
    }

    /// This replica's terms of a step: its retain rows and forget rows in one pass.
    fn share_terms<B, M>(
        &self,
        model: &M,
        targets: &Targets<B>,
        lambda: f64,
        rows: ShareRows<'_>,
        count: bool,
        device: &B::Device,
    ) -> Result<ShareTerms<B>>
    where
        B: FusedAutodiff,
        M: EngineModel<B, Data = D>,
    {
        let (cfg, objective) = (self.unlearn_cfg, self.objective);
        let (rb, fb) = (rows.retain, rows.forget);
        let both: Vec<usize> = rb.iter().chain(fb).copied().collect();
        let (nr, nf) = (rb.len(), fb.len());
        let batch = model.batch(&self.task.train, &both, device)?;
        // The task term needs the logits; without it the pass ends at the last adapted layer.
        let (taps, logits) = if self.task_weight > 0.0 {
            let pass = model.pass(&batch.input, true);
            (pass.taps, pass.logits)
        } else {
            (model.taps(&batch.input), None)
        };
        let mask = batch.token_mask();
        let seq = if self.cls_only { 1 } else { taps[0].pre.dims()[1] };
        let row_classes: Option<Vec<usize>> = (!self.target_class.is_empty())
            .then(|| fb.iter().map(|i| self.target_class[i]).collect());
        let mu = match targets {
            Targets::ByToken(t) => {
                let (ids, _) = token_ids(&batch.input, nr..nr + nf).expect("token inputs");
                t.for_batch(nf, seq, &ids)?
            }
            _ => targets.for_batch(nf, seq, row_classes.as_deref())?,
        };
        let split = rfa_fused::TapSplit { retain_rows: nr, forget_first_token_only: self.cls_only };
        let (parts, first_tokens) = if cfg.retain_cls_weight > 0.0 {
            // The extra term reads the retain rows' first tokens: split the taps once for both.
            let s = SplitTaps::new(&taps, split, mask.as_ref())?;
            let parts = objective.total(
                &s.retain,
                s.retain_mask.as_ref(),
                &s.forget,
                &mu,
                s.forget_mask.as_ref(),
            )?;
            let cls: Vec<_> =
                s.retain.iter().map(|t| t.clone().map(|x| x.narrow(1, 0, 1))).collect();
            (parts, Some(objective.retain_loss(&cls, None)?))
        } else {
            (objective.total_rows(&taps, split, mask.as_ref(), &mu)?, None)
        };
        let task = (self.task_weight > 0.0)
            .then(|| task_loss_terms(logits.as_ref().expect("logits"), &batch, 0..nr));
        // With this step's λ (the objective's own is `unlearn.lambda`).
        let mut total = parts.total(lambda);
        if let Some(c) = &first_tokens {
            total = total + c.clone().mul_scalar(cfg.retain_cls_weight);
        }
        if let Some((ce, _)) = &task {
            total = total + ce.clone().mul_scalar(self.task_weight);
        }
        // Real tokens per term (every token of a batch without padding): read back only when
        // replicas weigh their shares.
        let tokens = |rows: std::ops::Range<usize>| -> f64 {
            match &mask {
                Some(m) => scalar(m.clone().narrow(0, rows.start, rows.len()).sum()),
                None => (rows.len() * taps[0].pre.dims()[1]) as f64,
            }
        };
        let counts = count.then(|| {
            let forget_terms = if self.cls_only { nf as f64 } else { tokens(nr..nr + nf) };
            let task_terms = task.as_ref().map_or(0.0, |t| t.1 as f64);
            [tokens(0..nr), forget_terms, nr as f64, task_terms]
        });
        Ok(ShareTerms {
            retain: parts.retain,
            forget: parts.forget,
            first_tokens,
            task: task.map(|t| t.0),
            total,
            counts,
        })
    }

    /// The replicas' terms summed: each share's means weigh by its part of the batch's terms
    /// (`counted` is false for a stand-in share, which weighs nothing).
    fn shared_step<B: FusedAutodiff>(
        &self,
        replica: &Replica<B>,
        computed: Result<ShareTerms<B>>,
        lambda: f64,
        counted: bool,
    ) -> Result<SharedStep<B>> {
        let cls_weight = self.unlearn_cfg.retain_cls_weight;
        let value = |t: &Option<Tensor<B, 1>>| t.clone().map_or(0.0, scalar);
        let (mine, values, failed) = match &computed {
            Ok(t) => (
                t.counts.filter(|_| counted).unwrap_or_default(),
                [
                    scalar(t.retain.clone()),
                    scalar(t.forget.clone()),
                    value(&t.first_tokens),
                    value(&t.task),
                ],
                0.0,
            ),
            Err(_) => ([0.0; 4], [0.0; 4], 1.0),
        };
        let s = replica.sum([
            mine[0],
            mine[1],
            mine[2],
            mine[3],
            values[0] * mine[0],
            values[1] * mine[1],
            values[2] * mine[2],
            values[3] * mine[3],
            failed,
        ])?;
        let mean = |i: usize| if s[i] > 0.0 { s[4 + i] / s[i] } else { 0.0 };
        let weight = |i: usize| if s[i] > 0.0 { mine[i] / s[i] } else { 0.0 };
        let (retain, forget) = (mean(0), mean(1));
        let total = retain + lambda * forget + cls_weight * mean(2) + self.task_weight * mean(3);
        let loss = match computed {
            Err(e) => Err(e),
            Ok(_) if s[8] > 0.0 => Err(ReplicaStopped.into()),
            Ok(t) => {
                let mut l =
                    t.retain.mul_scalar(weight(0)) + t.forget.mul_scalar(lambda * weight(1));
                if let Some(c) = t.first_tokens {
                    l = l + c.mul_scalar(cls_weight * weight(2));
                }
                if let Some(k) = t.task {
                    l = l + k.mul_scalar(self.task_weight * weight(3));
                }
                Ok(l)
            }
        };
        Ok(SharedStep { loss, total, retain, forget })
    }
}
