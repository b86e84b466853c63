//! Training, unlearning and evaluation, generic over burn backends and over the models the
//! engine knows ([`EngineModel`]: ViT, BERT, GPT-2).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressStyle};
use lora_core::{LoraConfig, TargetModules, attach_lora, count_params};
use rfa_data::batches;
use rfa_loss::{FeatureStats, RfaObjective, TargetStrategy, Targets, target_classes};
use rfa_models::{FusedAutodiff, FusedOps};
use rfa_rng::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::config::UnlearnConfig;
use crate::confusable::{Confusion, RetainSampler, most_confusable};
use crate::data_parallel::replicate;
use crate::engine_model::{EngineModel, Logits, Samples};
use crate::forget_selection::{ForgetSelection, Selected, select_unseen_error};
use crate::head_check::check_head_targets;
use crate::probe::{
    CheckSchedule, Checked, Criterion, Probes, StopRecord, StopState, Verdict, measure,
};
use crate::rfa_steps::{ReplicaState, StepPlan, Stepped};
use crate::scenario::{RetainSampling, RfaSettings, StopRule};
use crate::stats_sample::MeanPrecision;
use crate::task::Task;
use crate::token_targets::{forget_vocabulary, token_ids};

pub fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("f32")[0] as f64
}

pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("f32")
}

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// One RFA step's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub total: f64,
    pub retain: f64,
    pub forget: f64,
    /// Wall time from the step's batch to its optimizer update. The loss is read each step, so
    /// on a GPU a step also waits for the previous one's kernels; the first step includes the
    /// run-time compilation of every kernel (none with a warm kernel cache). 0 in older logs.
    #[serde(default)]
    pub seconds: f64,
}

impl StepLog {
    /// Step `step`'s record: its `[total, retain, forget]` loss, timed from `started`.
    pub fn after(step: usize, [total, retain, forget]: [f64; 3], started: Instant) -> Self {
        Self { step, total, retain, forget, seconds: started.elapsed().as_secs_f64() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnlearnLog {
    pub steps: Vec<StepLog>,
    pub adapted: Vec<String>,
    pub trainable_params: usize,
    pub total_params: usize,
    pub stats_seconds: f64,
    /// Retained samples the targets were estimated from.
    #[serde(default)]
    pub stats_samples: usize,
    /// RFA: the settings after `auto` was resolved (absent in older logs and for baselines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<RfaSettings>,
    /// RFA with `unlearn.forget_selection = "unseen-error"`: what the forget term trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected: Option<Selected>,
    /// RFA with the probe stop rule: why and when it stopped, every check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopRecord>,
}

/// An unlearning's first step apart from the others: a GPU run's start-up cost apart from its
/// steady pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTimes {
    pub first_seconds: f64,
    /// The median of the other steps; `None` with a single step.
    pub median_seconds: Option<f64>,
}

impl UnlearnLog {
    /// `None` without steps.
    pub fn step_times(&self) -> Option<StepTimes> {
        let (first, rest) = self.steps.split_first()?;
        let mut rest: Vec<f64> = rest.iter().map(|s| s.seconds).collect();
        rest.sort_by(f64::total_cmp);
        Some(StepTimes {
            first_seconds: first.seconds,
            median_seconds: (!rest.is_empty()).then(|| rest[rest.len() / 2]),
        })
    }
}

/// Residual Feature Alignment (docs/rfa-method.md): LoRA adapters on the layers
/// `unlearn_cfg.targets` selects, B = 0 so the model starts at `m0`; targets `mu_l` from `m0`'s
/// features on `Dr` (the strategy `settings.target`); then up to `unlearn_cfg.epochs` passes over
/// `Df`, each forget batch paired with a retain batch (`settings.retain_sampling`) in one forward
/// pass, loss = retain + λ·forget (+ γ·task loss on the retain batch), AdamW on the adapters.
/// Padding tokens take part in neither term. With `settings.stop = probe` the validation probes
/// decide when to stop and which adapter to keep ([`crate::probe`]).
pub fn unlearn_rfa<B, M>(
    m0: M,
    task: &Task<M::Data>,
    unlearn_cfg: &UnlearnConfig,
    settings: &RfaSettings,
    seed: u64,
    devices: &[B::Device],
) -> Result<(M, UnlearnLog)>
where
    B: FusedAutodiff,
    M: EngineModel<B> + AutodiffModule<B>,
    M::InnerModule: EngineModel<B::InnerBackend, Data = M::Data>,
{
    let device = devices.first().context("no device to unlearn on")?;
    let cfg = LoraConfig {
        seed,
        ..LoraConfig::new(
            unlearn_cfg.rank,
            unlearn_cfg.alpha,
            TargetModules::parse(&unlearn_cfg.targets),
        )
    };
    let (model, adapted) = attach_lora(m0, &cfg)?;
    let params = count_params(&model);
    let classifier = model.num_labels().is_some();
    let cls_only = match unlearn_cfg.forget_tokens.as_str() {
        "all" => false,
        "cls" if classifier => true,
        "cls" => bail!(
            "unlearn.forget_tokens = `cls` needs a classifier that reads the first token; a {} uses `all`",
            M::KIND
        ),
        other => bail!("unlearn.forget_tokens must be `all` or `cls`, not `{other}`"),
    };
    if unlearn_cfg.retain_cls_weight > 0.0 && !classifier {
        bail!(
            "unlearn.retain_cls_weight needs a classifier that reads the first token; a {} has none",
            M::KIND
        );
    }
    if !classifier && settings.target.by_class() {
        bail!(
            "unlearn.target = \"{}\" sends samples to class means; a {} has no classes",
            settings.target,
            M::KIND
        );
    }
    if !classifier && settings.retain_sampling == RetainSampling::Confusable {
        bail!(
            "unlearn.retain_sampling = \"confusable\" ranks samples by a classifier's predictions; a {} has none",
            M::KIND
        );
    }
    if !classifier && settings.stop == StopRule::Probe {
        bail!(
            "unlearn.stop = \"probe\" reads a classifier's predictions; a {} stops after unlearn.epochs",
            M::KIND
        );
    }
    settings.check()?;
    crate::forget_selection::check_selection(
        settings.forget_selection,
        classifier.then_some(task.probe.len()),
    )?;
    let task_weight = settings.retain_task_weight;
    // The forget term's view of a tap (and of the padding mask): every token, or the first
    // (CLS) one.
    let view = |t: Tensor<B, 3>| if cls_only { t.narrow(1, 0, 1) } else { t };
    let view_mask = |m: Option<Tensor<B, 2>>| if cls_only { None } else { m };
    let objective = RfaObjective {
        lambda: unlearn_cfg.lambda,
        layer_weights: unlearn_cfg.layer_weights.clone(),
        target: settings.target,
        retain_task_weight: task_weight,
    };

    // Targets from M0's pre-trained features on Dr (B = 0: the adapted model is M0), and for a
    // classifier the same statistics of the head's input, M0's logits and features.
    let t0 = Instant::now();
    let classes = task.train.class_names().len();
    let mut stats = FeatureStats::<B>::new(classes);
    let mut head_stats = FeatureStats::<B::InnerBackend>::new(classes);
    let (mut stats_logits, mut stats_features, mut feature_dim) = (Vec::new(), Vec::new(), 0);
    // What the pass over Dr keeps besides the taps: the head's input statistics for the head
    // check (class-wise), M0's logits or features for the confusable ranking.
    let class_wise = classifier && task.split.class.is_some();
    let confusable = settings.retain_sampling == RetainSampling::Confusable;
    let (keep_logits, keep_features) = (confusable && class_wise, confusable && !class_wise);
    let inner = model.valid();
    let mut stats_set = task.split.retain.clone();
    if unlearn_cfg.stats_samples > 0 && unlearn_cfg.stats_samples < stats_set.len() {
        SplitMix64::new(seed ^ 0x57a7).shuffle(&mut stats_set);
        stats_set.truncate(unlearn_cfg.stats_samples);
        stats_set.sort();
    }
    // With labels, the pass may stop once the class means are precise enough; it reads Dr in a
    // seeded random order so that what it has read is a uniform sample.
    let precision = (classifier && unlearn_cfg.stats_precision > 0.0).then(|| {
        SplitMix64::new(seed ^ 0x57a8).shuffle(&mut stats_set);
        MeanPrecision::new(&stats_set, task.train.labels(), classes, unlearn_cfg.stats_precision)
    });
    let by_token = settings.target == TargetStrategy::OwnTokenMean;
    if by_token && cls_only {
        bail!(
            "unlearn.target = \"own-token-mean\" sends every forgotten token to its own id's mean; \
             it needs unlearn.forget_tokens = \"all\""
        );
    }
    let mut token_stats =
        if by_token { Some(forget_vocabulary(&inner, task, device)?) } else { None };
    let mut read = 0;
    let pb = bar(stats_set.len() as u64, "features");
    for b in batches(&stats_set, 64, false, 0) {
        crate::interrupt::check("the pass over the retain set")?;
        let batch = inner.batch(&task.train, &b, device)?;
        let inner_taps = if class_wise || keep_features {
            let pass = inner.pass(&batch.input, keep_logits);
            if let Some(Logits::Classes(l)) = pass.logits.filter(|_| keep_logits) {
                stats_logits.extend(host(l));
            }
            let [n, d] = pass.features.dims();
            feature_dim = d;
            if keep_features {
                stats_features.extend(host(pass.features.clone()));
            }
            if class_wise {
                let f = pass.features.reshape([n, 1, d]);
                head_stats.add_features(&[f], Some(&batch.labels), None)?;
            }
            pass.taps
        } else {
            inner.taps(&batch.input)
        };
        let taps: Vec<lora_core::Tap<B>> =
            inner_taps.into_iter().map(|t| t.map(|x| view(Tensor::from_inner(x)))).collect();
        let mask = view_mask(batch.token_mask().map(Tensor::from_inner));
        stats.add(&taps, Some(&batch.labels), mask.as_ref())?;
        if let Some(ts) = &mut token_stats {
            let (ids, m) = token_ids(&batch.input, 0..b.len()).expect("token inputs");
            let pre: Vec<Tensor<B, 3>> = taps.iter().map(|t| t.pre.clone()).collect();
            ts.add(&pre, &ids, &m)?;
        }
        pb.inc(b.len() as u64);
        read += b.len();
        if precision.as_ref().is_some_and(|p| p.reached(&stats)) {
            break;
        }
    }
    pb.finish();
    stats_set.truncate(read);
    let mut targets = match &token_stats {
        Some(ts) => Targets::ByToken(ts.resolve(device)?),
        None => Targets::resolve(settings.target, &stats)?,
    };
    let forget = &task.split.forget;
    let forget_labels: Vec<usize> = forget.iter().map(|&i| task.train.labels()[i]).collect();
    // M0 on Df: the runner-up classes, and the features confusable samples are compared with.
    let select = settings.forget_selection == ForgetSelection::UnseenError;
    let need_forget_pass =
        matches!(settings.target, TargetStrategy::RunnerUpClassMean | TargetStrategy::BoundaryMean)
            || keep_features
            || select;
    let m0_forget =
        if need_forget_pass { Some(outputs(&inner, &task.train, forget, device)?) } else { None };
    let mut row_of = target_classes(
        settings.target,
        &stats,
        &forget_labels,
        m0_forget.as_ref().map(|o| o.logits.as_slice()),
        seed,
    )?;
    if settings.target == TargetStrategy::BoundaryMean
        && let Some(runner_up) = &row_of
    {
        // The rows of a table of (own, runner-up) midpoints instead of classes.
        let (t, rows) = rfa_loss::boundary_targets(&stats, &forget_labels, runner_up)?;
        targets = t;
        row_of = Some(rows);
    }
    let target_class: HashMap<usize, usize> =
        row_of.map(|c| forget.iter().copied().zip(c).collect()).unwrap_or_default();
    if class_wise && let Some(c) = task.split.class {
        check_head_targets(
            |f| inner.classify(f),
            settings.target,
            &head_stats,
            &target_class,
            c,
            task.train.class_names(),
        )?;
    }
    let mut sampler = RetainSampler::uniform(&task.split.retain, seed ^ 0x5eed);
    if confusable {
        let scores = match (task.split.class, &m0_forget) {
            (Some(c), _) => {
                let p = rfa_eval::softmax(&rfa_eval::Rows::new(
                    "M0's retain logits",
                    &stats_logits,
                    classes,
                )?);
                Confusion::ForgottenClassProbability(
                    (0..stats_set.len()).map(|i| p[i * classes + c] as f64).collect(),
                )
            }
            (None, Some(f)) => Confusion::NearestForgetFeature {
                candidates: &stats_features,
                forget: &f.features,
                dim: feature_dim,
                seed,
            },
            (None, None) => unreachable!("the forget pass runs for confusable sampling"),
        }
        .scores();
        // The pool is the most confusable |Df| of Dr; from a sample of Dr, the same share of it.
        let share = stats_set.len() as f64 / task.split.retain.len().max(1) as f64;
        let size = ((forget.len() as f64 * share).ceil() as usize).max(unlearn_cfg.batch_size);
        let pool = most_confusable(&stats_set, &scores, size);
        sampler = sampler.with_confusable(pool, unlearn_cfg.confusable_share);
    }
    let selected = match (&m0_forget, select) {
        (Some(m0), true) => Some(select_unseen_error(&inner, task, m0, classes, device)?),
        _ => None,
    };
    let forget_rows = selected.as_ref().map_or(forget.as_slice(), |s| s.rows.as_slice());
    let stats_seconds = t0.elapsed().as_secs_f64();

    let steps_per_epoch = forget.len().div_ceil(unlearn_cfg.batch_size);
    let schedule = CheckSchedule::new(unlearn_cfg.check_every, steps_per_epoch, class_wise);
    let probes = (settings.stop == StopRule::Probe)
        .then(|| Probes::draw(task, unlearn_cfg.probe_samples, seed));
    let mut stop = probes.as_ref().map(|p| {
        StopState::<M>::new(Criterion::new(unlearn_cfg, task.split.class, p), settings.balance)
    });
    let check = |stop: &mut StopState<M>, model: &M, step: usize| -> Result<Checked> {
        let started = Instant::now();
        let c = measure(
            &model.valid(),
            task,
            probes.as_ref().expect("probes"),
            stop.criterion(),
            stop.retain_floor(),
            step,
            device,
        )?;
        stop.check_seconds += started.elapsed().as_secs_f64();
        let verdict = stop.observe(c, model);
        Ok(Checked { verdict, lambda_scale: stop.lambda_scale() })
    };
    if let Some(s) = &mut stop {
        check(s, &model, 0)?;
    }

    let plan = StepPlan {
        task,
        unlearn_cfg,
        objective: &objective,
        target_class: &target_class,
        forget_rows,
        cls_only,
        task_weight,
        seed,
        schedule,
    };
    // Every replica starts from the lead's adapters, targets and retain sampler.
    let copies: Vec<Mutex<Option<ReplicaState<B, M>>>> = devices[1..]
        .iter()
        .map(|d| {
            Mutex::new(Some(ReplicaState {
                model: model.clone().fork(d),
                targets: targets.to_device(d),
                sampler: sampler.clone(),
            }))
        })
        .collect();
    let lead_state = ReplicaState { model, targets, sampler };
    let Stepped { mut model, steps, verdict } = replicate::<B, _>(
        devices,
        |lead| {
            let mut checked = |m: &M, step: usize| match &mut stop {
                Some(s) => check(s, m, step),
                None => Ok(Checked { verdict: Verdict::Continue, lambda_scale: 1.0 }),
            };
            plan.run(lead, lead_state, Some(&mut checked))
        },
        |follower| {
            let copy = copies[follower.rank() - 1].lock().ok().and_then(|mut c| c.take());
            plan.run(follower, copy.context("a replica's adapters")?, None).map(|_| ())
        },
    )?;
    let stop_record = match stop {
        Some(mut s) => {
            // The last adapter is measured like the others.
            if verdict == Verdict::Continue && !schedule.is_check(steps.len()) {
                check(&mut s, &model, steps.len())?;
            }
            let (kept, record) = s.finish(steps.len(), model);
            model = kept;
            eprintln!(
                "RFA stopped after step {}: {}; kept the adapter of step {}",
                record.stopped_after_step, record.reason, record.kept_step
            );
            Some(record)
        }
        None => None,
    };
    Ok((
        model,
        UnlearnLog {
            steps,
            adapted,
            trainable_params: params.trainable,
            total_params: params.total,
            stats_seconds,
            stats_samples: stats_set.len(),
            settings: Some(*settings),
            selected,
            stop: stop_record,
        },
    ))
}

/// Outputs of a model over a set of samples, on the host.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// Classifiers: `[n, classes]` logits, row-major (empty for language models).
    pub logits: Vec<f32>,
    pub classes: usize,
    /// Language models: per sample, the log-probability of each real token after the first.
    pub token_logprobs: Vec<Vec<f32>>,
    pub features: Vec<f32>,
    pub feature_dim: usize,
    pub labels: Vec<usize>,
    /// Per sample: mean over adapted layers of the mean residual norm ||r_l|| over real tokens
    /// (empty without adapters).
    pub residual_norms: Vec<f32>,
}

/// Runs `model` (without autodiff) over `indices` of `ds`.
pub fn outputs<B: FusedOps, M: EngineModel<B>>(
    model: &M,
    ds: &M::Data,
    indices: &[usize],
    device: &B::Device,
) -> Result<Outputs> {
    read_outputs(model, ds, indices, device, true)
}

/// [`outputs`] without the features and the residual norms: the stop rule's checks read the
/// logits alone, and the residual norms of every adapted layer cost as much as a good part of
/// the forward pass.
pub fn logits_only<B: FusedOps, M: EngineModel<B>>(
    model: &M,
    ds: &M::Data,
    indices: &[usize],
    device: &B::Device,
) -> Result<Outputs> {
    read_outputs(model, ds, indices, device, false)
}

fn read_outputs<B: FusedOps, M: EngineModel<B>>(
    model: &M,
    ds: &M::Data,
    indices: &[usize],
    device: &B::Device,
    with_features: bool,
) -> Result<Outputs> {
    let mut o = Outputs { classes: model.num_labels().unwrap_or(0), ..Outputs::default() };
    // Language-model logits are [tokens, vocab]: keep batches small.
    let per_batch = if model.num_labels().is_some() { 128 } else { 16 };
    for b in batches(indices, per_batch, false, 0) {
        let batch = model.batch(ds, &b, device)?;
        let pass = model.pass(&batch.input, true);
        let mask = batch.token_mask();
        match pass.logits.expect("logits") {
            Logits::Classes(l) => o.logits.extend(host(l)),
            Logits::Tokens { hidden, head } => {
                let next = batch.next.as_ref().expect("token batch");
                let mut rows = vec![Vec::new(); b.len()];
                if let (Some(lp), row) =
                    crate::engine_model::next_token_logprobs(&hidden, &head, next, 0..b.len())
                {
                    for (r, x) in row.into_iter().zip(host(lp)) {
                        rows[r].push(x);
                    }
                }
                o.token_logprobs.extend(rows);
            }
        }
        o.labels.extend(batch.labels);
        if !with_features {
            continue;
        }
        o.feature_dim = pass.features.dims()[1];
        o.features.extend(host(pass.features));
        if !pass.taps.is_empty() {
            let n = pass.taps.len() as f64;
            let per: Tensor<B, 1> = pass
                .taps
                .into_iter()
                .map(|t| {
                    let [bb, tt, _] = t.residual.dims();
                    let norms = t.residual.powf_scalar(2.0).sum_dim(2).sqrt().reshape([bb, tt]);
                    // Taps of the classifier head have one token; the padding mask has the
                    // sequence.
                    match mask.clone().filter(|m| m.dims()[1] == tt) {
                        Some(m) => {
                            (norms * m.clone()).sum_dim(1).reshape([bb])
                                / m.sum_dim(1).reshape([bb])
                        }
                        None => norms.mean_dim(1).reshape([bb]),
                    }
                })
                .reduce(|a, b| a + b)
                .expect("taps")
                .div_scalar(n);
            o.residual_norms.extend(host(per));
        }
    }
    Ok(o)
}
