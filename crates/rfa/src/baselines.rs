//! The unlearning methods RFA is compared with, on the same models, data, batches and
//! optimiser, each on LoRA adapters (RFA's rank, alpha and targets) or on every weight.
//!
//! | method | objective per step (f = forget batch, r = retain batch) | reference |
//! |---|---|---|
//! | `finetune` | L(r), passes over Dr | Warnecke et al. 2023 ("FT") |
//! | `grad-ascent` | −L(f) | Thudi et al. 2022 |
//! | `random-label` | L(f with random wrong labels) | Golatkar et al. 2020 |
//! | `grad-diff`, `neggrad+` | L(r) − w·L(f) | Kurmanji et al. 2023; Liu et al. 2022 |
//! | `scrub` | α·KL(M0‖θ; r) + γ·L(r) − KL(M0‖θ; f) (the last only in the first epochs) | Kurmanji
//! et al. 2023 |
//! | `l1-sparse` | L(r) + w·‖θ‖₁, passes over Dr | Jia et al. 2023 |
//! | `salun` | L(f with random wrong labels) + L(r), gradients masked to the weights with the
//! largest forget-loss gradient | Fan et al. 2024 |
//! | `npo` | −(2/β)·log σ(−β·(log πθ(f) − log πM0(f))) + L(r) | Zhang et al. 2024 (NPO + retain
//! loss) |
//!
//! L is the task loss (cross-entropy, or the causal-LM loss); KL, NPO's term and the l1 norm
//! are in `rfa_loss::baseline_losses`. SCRUB alternates max and min
//! steps in the paper; here both terms share one step on a paired batch (as RFA's steps do),
//! with the max term in the first `scrub_max_epochs` epochs only.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use lora_core::{ForeachAdamW, LoraConfig, TargetModules, attach_lora, count_params};
use rfa_data::batches;
use rfa_loss::baseline_losses::{kl_divergence, npo_loss};
use rfa_models::FusedAutodiff;
use rfa_rng::SplitMix64;

use crate::config::UnlearnConfig;
use crate::engine::{StepLog, UnlearnLog, bar, scalar};
use crate::engine_model::{Batch, EngineModel, Input, Logits, Samples, task_loss};
use crate::method::Method;
use crate::task::Task;

/// What each baseline passes over and trains on.
impl Method {
    /// Methods that pass over Dr (the rest pass over Df).
    fn over_retain(self) -> bool {
        matches!(self, Self::Finetune | Self::L1Sparse)
    }

    fn uses_retain(self) -> bool {
        !matches!(self, Self::GradAscent | Self::RandomLabel)
    }

    fn uses_forget(self) -> bool {
        !self.over_retain()
    }
}

/// Runs one baseline from `m0`. Returns the trained model (with adapters in `lora` mode).
pub fn unlearn_baseline<B, M>(
    m0: M,
    task: &Task<M::Data>,
    unlearn_cfg: &UnlearnConfig,
    seed: u64,
    device: &B::Device,
) -> Result<(M, UnlearnLog)>
where
    B: FusedAutodiff,
    M: EngineModel<B> + AutodiffModule<B>,
    M::InnerModule: EngineModel<B::InnerBackend, Data = M::Data>,
{
    let method = unlearn_cfg.method;
    if method == Method::Rfa {
        bail!("rfa is not a baseline: Run::unlearn runs it");
    }
    let classes = task.train.class_names().len();
    if method.relabels() && m0.num_labels().is_none() {
        bail!(
            "`{}` trains on wrong labels and needs a classifier; for a {} use grad-ascent, grad-diff or npo",
            unlearn_cfg.method,
            M::KIND
        );
    }
    if method.relabels() && classes < 2 {
        bail!("`{}` needs at least two classes", unlearn_cfg.method);
    }
    let teacher = m0.valid();
    let (mut model, adapted, full) = match unlearn_cfg.adapter.as_str() {
        "lora" => {
            let cfg = LoraConfig {
                seed,
                ..LoraConfig::new(
                    unlearn_cfg.rank,
                    unlearn_cfg.alpha,
                    TargetModules::parse(&unlearn_cfg.targets),
                )
            };
            let (m, adapted) = attach_lora(m0, &cfg)?;
            (m, adapted, false)
        }
        "full" => (lora_core::unfreeze(m0), Vec::new(), true),
        other => bail!("unlearn.adapter must be `lora` or `full`, not `{other}`"),
    };
    let params = count_params(&model);
    let trainable = if full { params.total } else { params.trainable };

    let t0 = Instant::now();
    let mask = if method == Method::Salun {
        Some(saliency_mask(&model, task, unlearn_cfg, device)?)
    } else {
        None
    };
    let stats_seconds = t0.elapsed().as_secs_f64();

    let mut optim = ForeachAdamW::<B>::new(unlearn_cfg.weight_decay as f32, 1e-8);
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    let mut label_rng = SplitMix64::new(seed ^ 0x1abe1);
    let mut retain_pool: Vec<usize> = Vec::new();
    let driver = if method.over_retain() { &task.split.retain } else { &task.split.forget };
    let pb = bar((driver.len() * unlearn_cfg.epochs) as u64, unlearn_cfg.method.name());
    let mut steps = Vec::new();
    for epoch in 0..unlearn_cfg.epochs {
        for b in
            batches(driver, unlearn_cfg.batch_size, true, seed.wrapping_add(31 * epoch as u64 + 1))
        {
            crate::interrupt::check(unlearn_cfg.method.name())?;
            let step_start = Instant::now();
            let (rb, fb) = if method.over_retain() {
                (b.clone(), Vec::new())
            } else if method.uses_retain() {
                let mut rb = Vec::with_capacity(b.len());
                while rb.len() < b.len() {
                    if retain_pool.is_empty() {
                        retain_pool = task.split.retain.clone();
                        rng.shuffle(&mut retain_pool);
                    }
                    rb.push(retain_pool.pop().expect("non-empty"));
                }
                (rb, b.clone())
            } else {
                (Vec::new(), b.clone())
            };
            let (nr, nf) = (rb.len(), fb.len());
            let both: Vec<usize> = rb.iter().chain(&fb).copied().collect();
            let mut batch = model.batch(&task.train, &both, device)?;
            if method.relabels() {
                for l in &mut batch.labels[nr..] {
                    *l = (*l + 1 + label_rng.below(classes - 1)) % classes;
                }
            }
            let pass = model.pass(&batch.input, true);
            let logits = pass.logits.as_ref().expect("logits");
            let retain = (nr > 0).then(|| task_loss(logits, &batch, 0..nr));
            let forget =
                (nf > 0 && method.uses_forget()).then(|| task_loss(logits, &batch, nr..nr + nf));
            let (rv, fv) = (
                retain.clone().map(scalar).unwrap_or(0.0),
                forget.clone().map(scalar).unwrap_or(0.0),
            );
            let r = || retain.clone().expect("retain batch");
            let f = || forget.clone().expect("forget batch");
            let total = match method {
                Method::Rfa => unreachable!("refused before the first step"),
                Method::Finetune => r(),
                Method::L1Sparse => r() + l1_norm(&model).mul_scalar(unlearn_cfg.l1_weight),
                Method::GradAscent => f().neg(),
                Method::RandomLabel => f(),
                Method::GradDiff => r() - f().mul_scalar(unlearn_cfg.forget_weight),
                Method::Salun => f() + r(),
                Method::Scrub => {
                    let t = teacher.pass(&inner_input(&batch.input), true);
                    let t = t.logits.expect("teacher logits");
                    let mut total = kl_to_teacher(&t, logits, &batch, 0..nr)
                        .mul_scalar(unlearn_cfg.scrub_alpha)
                        + r().mul_scalar(unlearn_cfg.scrub_gamma);
                    if epoch < unlearn_cfg.scrub_max_epochs {
                        total = total - kl_to_teacher(&t, logits, &batch, nr..nr + nf);
                    }
                    total
                }
                Method::Npo => {
                    let t = teacher
                        .pass(&inner_input(&batch.input), true)
                        .logits
                        .expect("teacher logits");
                    let lp = sequence_logprob(logits, &batch, nr..nr + nf);
                    let lp_ref = Tensor::<B, 1>::from_inner(sequence_logprob(
                        &t,
                        &inner_batch(&batch),
                        nr..nr + nf,
                    ));
                    npo_loss(lp, lp_ref, unlearn_cfg.npo_beta) + r()
                }
            };
            let tv = scalar(total.clone());
            if !tv.is_finite() {
                pb.abandon();
                bail!(
                    "{}: the loss became {tv} at step {}; the weights diverged: lower unlearn.lr \
                     (now {}); nothing was written",
                    unlearn_cfg.method,
                    steps.len(),
                    unlearn_cfg.lr
                );
            }
            let mut grads = GradientsParams::from_grads(total.backward(), &model);
            if let Some(m) = &mask {
                grads = apply_mask(&model, grads, m);
            }
            model = optim.step(unlearn_cfg.lr, model, grads)?;
            steps.push(StepLog::after(steps.len(), [tv, rv, fv], step_start));
            pb.inc(b.len() as u64);
            pb.set_message(format!("loss {tv:.4}"));
        }
    }
    pb.finish();
    Ok((
        model,
        UnlearnLog {
            steps,
            adapted,
            trainable_params: trainable,
            total_params: params.total,
            stats_seconds,
            stats_samples: 0,
            settings: None,
            selected: None,
            stop: None,
        },
    ))
}

fn inner_input<B: AutodiffBackend>(input: &Input<B>) -> Input<B::InnerBackend> {
    match input {
        Input::Pixels(x) => Input::Pixels(x.clone().inner()),
        Input::Tokens { ids, mask } => {
            Input::Tokens { ids: ids.clone().inner(), mask: mask.clone().inner() }
        }
    }
}

fn inner_batch<B: AutodiffBackend>(b: &Batch<B>) -> Batch<B::InnerBackend> {
    Batch { input: inner_input(&b.input), labels: b.labels.clone(), next: b.next.clone() }
}

/// Log-probabilities over the output space per prediction of rows `rows`: `[rows, classes]`
/// for a classifier, `[real next tokens, vocab]` for a language model.
fn log_probs<B: Backend>(
    logits: &Logits<B>,
    batch: &Batch<B>,
    rows: std::ops::Range<usize>,
) -> Option<Tensor<B, 2>> {
    match logits {
        Logits::Classes(l) => {
            Some(log_softmax(l.clone().narrow(0, rows.start, rows.end - rows.start), 1))
        }
        Logits::Tokens { hidden, head } => {
            let next = batch.next.as_ref().expect("token batch");
            crate::engine_model::next_token_log_softmax(hidden, head, next, rows)
                .map(|(lp, _, _)| lp)
        }
    }
}

/// KL(teacher ‖ student), mean over the predictions of `rows`.
fn kl_to_teacher<B: AutodiffBackend>(
    teacher: &Logits<B::InnerBackend>,
    student: &Logits<B>,
    batch: &Batch<B>,
    rows: std::ops::Range<usize>,
) -> Tensor<B, 1> {
    let s = log_probs(student, batch, rows.clone());
    let t = log_probs(teacher, &inner_batch(batch), rows);
    match (s, t) {
        (Some(s), Some(t)) => kl_divergence(Tensor::<B, 2>::from_inner(t), s),
        _ => Tensor::zeros([1], &batch_device(batch)),
    }
}

fn batch_device<B: Backend>(b: &Batch<B>) -> B::Device {
    match &b.input {
        Input::Pixels(x) => x.device(),
        Input::Tokens { ids, .. } => ids.device(),
    }
}

/// log π(y | x) per sample of `rows`: the label's log-probability for a classifier, the sum of
/// the real tokens' log-probabilities for a language model. `[rows]`.
pub fn sequence_logprob<B: Backend>(
    logits: &Logits<B>,
    batch: &Batch<B>,
    rows: std::ops::Range<usize>,
) -> Tensor<B, 1> {
    let n = rows.end - rows.start;
    let device = batch_device(batch);
    match logits {
        Logits::Classes(l) => {
            let y: Vec<i64> = batch.labels[rows.clone()].iter().map(|&c| c as i64).collect();
            let y = Tensor::from_data(TensorData::new(y, [n, 1]), &device);
            log_softmax(l.clone().narrow(0, rows.start, n), 1).gather(1, y).reshape([n])
        }
        Logits::Tokens { hidden, head } => {
            let next = batch.next.as_ref().expect("token batch");
            match crate::engine_model::next_token_logprobs(hidden, head, next, rows.clone()) {
                (Some(lp), row) => {
                    // Sum per sample: a [rows, positions] 0/1 matrix times the log-probabilities.
                    let m = row.len();
                    let mut onehot = vec![0f32; n * m];
                    for (j, &r) in row.iter().enumerate() {
                        onehot[(r - rows.start) * m + j] = 1.0;
                    }
                    Tensor::<B, 2>::from_data(TensorData::new(onehot, [n, m]), &device)
                        .matmul(lp.reshape([m, 1]))
                        .reshape([n])
                }
                (None, _) => Tensor::zeros([n], &device),
            }
        }
    }
}

/// Sum of |w| over the trainable weights.
fn l1_norm<B: Backend, M: Module<B>>(model: &M) -> Tensor<B, 1> {
    struct L1<B: Backend>(Option<Tensor<B, 1>>);
    impl<B: Backend> ModuleVisitor<B> for L1<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let v = param.val();
            if v.is_require_grad() {
                let s = rfa_loss::baseline_losses::l1(v);
                self.0 = Some(match self.0.take() {
                    Some(a) => a + s,
                    None => s,
                });
            }
        }
    }
    let mut v = L1(None);
    model.visit(&mut v);
    v.0.expect("the model has trainable weights")
}

/// SalUn's weight saliency: the gradient of the forget loss over all of Df, per trainable
/// weight; the `salun_ratio` share with the largest magnitude is updated, the rest frozen.
fn saliency_mask<B, M>(
    model: &M,
    task: &Task<M::Data>,
    unlearn_cfg: &UnlearnConfig,
    device: &B::Device,
) -> Result<HashMap<ParamId, Tensor<B::InnerBackend, 1>>>
where
    B: FusedAutodiff,
    M: EngineModel<B> + AutodiffModule<B>,
{
    if !(unlearn_cfg.salun_ratio > 0.0 && unlearn_cfg.salun_ratio <= 1.0) {
        bail!("unlearn.salun_ratio must be in (0, 1], not {}", unlearn_cfg.salun_ratio);
    }
    let mut sum: HashMap<ParamId, Tensor<B::InnerBackend, 1>> = HashMap::new();
    for b in batches(&task.split.forget, unlearn_cfg.batch_size, false, 0) {
        let batch = model.batch(&task.train, &b, device)?;
        let pass = model.pass(&batch.input, true);
        let loss = task_loss(pass.logits.as_ref().expect("logits"), &batch, 0..b.len())
            .mul_scalar(b.len() as f64);
        let grads = GradientsParams::from_grads(loss.backward(), model);
        model.visit(&mut Accumulate::<B> { grads: &grads, sum: &mut sum });
    }
    // The global threshold: the (1 − ratio) quantile of |gradient| over all trainable weights.
    let mut all: Vec<f32> = Vec::new();
    let host: HashMap<ParamId, Vec<f32>> = sum
        .iter()
        .map(|(id, t)| {
            (*id, t.clone().abs().into_data().convert::<f32>().into_vec::<f32>().expect("f32"))
        })
        .collect();
    host.values().for_each(|v| all.extend(v));
    if all.is_empty() {
        bail!("salun: no trainable weight received a gradient");
    }
    all.sort_by(|a, b| b.total_cmp(a));
    let k = ((all.len() as f64 * unlearn_cfg.salun_ratio).ceil() as usize).clamp(1, all.len());
    let threshold = all[k - 1];
    Ok(host
        .into_iter()
        .map(|(id, v)| {
            let n = v.len();
            let m: Vec<f32> =
                v.into_iter().map(|x| if x >= threshold { 1.0 } else { 0.0 }).collect();
            (id, Tensor::from_data(TensorData::new(m, [n]), device))
        })
        .collect())
}

/// Adds each weight's gradient (flattened) into `sum`.
struct Accumulate<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: &'a mut HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Accumulate<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let n = g.shape().num_elements();
            let g = g.reshape([n]);
            let e = self.sum.remove(&param.id).map(|s| s + g.clone()).unwrap_or(g);
            self.sum.insert(param.id, e);
        }
    }
}

/// Multiplies each weight's gradient by its 0/1 mask.
struct Mask<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    mask: &'a HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Mask<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(m) = self.mask.get(&param.id) else { return };
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let shape = g.shape();
            self.grads.register::<B::InnerBackend, D>(param.id, g * m.clone().reshape(shape));
        }
    }
}

/// Zeroes the gradients of the weights outside the mask.
fn apply_mask<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    mut grads: GradientsParams,
    mask: &HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
) -> GradientsParams {
    model.visit(&mut Mask::<B> { grads: &mut grads, mask });
    grads
}
