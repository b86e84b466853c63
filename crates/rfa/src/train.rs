//! Training every parameter of a model with the task's loss: M0, M\* and the pre-trained
//! backbones, on one device or data-parallel over several ([`crate::data_parallel`]).

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use indicatif::ProgressBar;
use lora_core::ForeachAdamW;
use rfa_data::batches;
use rfa_models::FusedAutodiff;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoints;
use crate::config::TrainConfig;
use crate::data_parallel::{Replica, ReplicaStopped, Share, replicate};
use crate::engine::{bar, scalar};
use crate::engine_model::{EngineModel, Samples, task_loss_terms};

/// One epoch's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub samples_per_s: f64,
}

/// Training of every parameter on `indices` with the task's loss (cross-entropy on the class,
/// or the causal-LM loss) and AdamW. After each epoch the whole state (model, optimizer, log) is
/// switched in as one folder ([`Checkpoints`]); a resumed run continues after its last completed
/// epoch exactly as an uninterrupted one would (each epoch's order comes from the seed and the
/// epoch's number). A non-finite loss stops training with an error that names the last good
/// checkpoint.
///
/// With several `devices` each takes a share of every batch and the gradients are summed before
/// the step: the same steps as on the first device alone, to float rounding.
#[allow(clippy::too_many_arguments)]
pub fn train_model<B, M>(
    mut model: M,
    ds: &M::Data,
    indices: &[usize],
    train_cfg: &TrainConfig,
    seed: u64,
    what: &str,
    ckpt: &Checkpoints,
    devices: &[B::Device],
) -> Result<(M, Vec<EpochLog>)>
where
    B: FusedAutodiff,
    M: EngineModel<B> + AutodiffModule<B>,
{
    if indices.is_empty() {
        bail!("{what}: no training samples");
    }
    if let Some(n) = model.num_labels().filter(|&n| n != ds.class_names().len()) {
        bail!("{what}: the model has {n} classes, the data {}", ds.class_names().len());
    }
    let device = devices.first().with_context(|| format!("{what}: no device to train on"))?;
    let mut optim = new_optimizer::<B>(train_cfg);
    let mut log: Vec<EpochLog> = Vec::new();
    if let Some(resumed) = ckpt.resume::<B, M>(&mut optim, device)? {
        (model, log) = (resumed.model, resumed.log);
        eprintln!("{what}: resuming after epoch {} from {}", log.len(), ckpt.dir.display());
    }
    let job = Job { ds, indices, train_cfg, seed, what };
    // Every replica starts from the lead's model and optimizer state.
    let moments = optim.state();
    let copies: Vec<Mutex<Option<M>>> =
        devices[1..].iter().map(|d| Mutex::new(Some(model.clone().fork(d)))).collect();
    replicate::<B, _>(
        devices,
        |lead| job.epochs(lead, model, optim, log.clone(), Some(ckpt)),
        |follower| {
            let copy = copies[follower.rank() - 1].lock().ok().and_then(|mut c| c.take());
            let model = copy.context("a replica's model")?;
            let mut optim = new_optimizer::<B>(train_cfg);
            optim.restore(moments.clone())?;
            job.epochs(follower, model, optim, log.clone(), None).map(|_| ())
        },
    )
}

fn new_optimizer<B: FusedAutodiff>(train_cfg: &TrainConfig) -> ForeachAdamW<B> {
    ForeachAdamW::<B>::new(train_cfg.weight_decay as f32, 1e-8)
}

/// What every replica of one training shares.
struct Job<'a, D> {
    ds: &'a D,
    indices: &'a [usize],
    train_cfg: &'a TrainConfig,
    seed: u64,
    what: &'a str,
}

/// One replica's share of a step: its mean loss, the terms it averages, and its value.
struct ShareLoss<B: FusedAutodiff> {
    loss: Tensor<B, 1>,
    terms: usize,
    value: f64,
}

impl<D: Samples> Job<'_, D> {
    /// The remaining epochs on one replica; `ckpt` on the lead only, which saves each epoch.
    fn epochs<B, M>(
        &self,
        replica: &Replica<B>,
        mut model: M,
        mut optim: ForeachAdamW<B>,
        mut log: Vec<EpochLog>,
        ckpt: Option<&Checkpoints>,
    ) -> Result<(M, Vec<EpochLog>)>
    where
        B: FusedAutodiff,
        M: EngineModel<B, Data = D> + AutodiffModule<B>,
    {
        let (what, train_cfg) = (self.what, self.train_cfg);
        for epoch in log.len()..train_cfg.epochs {
            let bs = batches(
                self.indices,
                train_cfg.batch_size,
                true,
                self.seed.wrapping_add(epoch as u64 * 7919),
            );
            let pb = if replica.is_lead() {
                bar(self.indices.len() as u64, what)
            } else {
                ProgressBar::hidden()
            };
            let start = Instant::now();
            let (mut sum, mut n) = (0.0, 0usize);
            for (step, b) in bs.iter().enumerate() {
                let share = replica.share(b);
                let computed = crate::interrupt::check(what)
                    .map_err(anyhow::Error::from)
                    .and_then(|()| self.share_loss(&model, share, replica.device()));
                let counted = match &computed {
                    Ok(s) if share.counts => s.terms,
                    _ => 0,
                };
                let value = computed.as_ref().map_or(0.0, |s| s.value);
                let failed = computed.is_err() as u8 as f64;
                let [terms, loss_sum, failures] =
                    replica.sum([counted as f64, value * counted as f64, failed])?;
                let share_loss = match computed {
                    Err(e) => {
                        pb.abandon();
                        return Err(e);
                    }
                    Ok(_) if failures > 0.0 => {
                        pb.abandon();
                        return Err(ReplicaStopped.into());
                    }
                    Ok(s) => s,
                };
                let weight = replica.weight(counted, terms);
                let l = match weight {
                    None => share_loss.value,
                    Some(_) if terms == 0.0 => 0.0,
                    Some(_) => loss_sum / terms,
                };
                if !l.is_finite() {
                    pb.abandon();
                    bail!(
                        "{what}: the loss became {l} at epoch {} step {step}; stopped. The last good model is {}",
                        epoch + 1,
                        match (log.is_empty(), ckpt) {
                            (true, _) =>
                                "none (it diverged in the first epoch: lower the learning rate)"
                                    .into(),
                            (false, Some(c)) => c.dir.display().to_string(),
                            (false, None) => "the lead replica's checkpoint".into(),
                        }
                    );
                }
                let loss = match weight {
                    None => share_loss.loss,
                    Some(w) => share_loss.loss.mul_scalar(w),
                };
                let grads =
                    replica.gradients(GradientsParams::from_grads(loss.backward(), &model))?;
                model = optim.step(train_cfg.lr, model, grads)?;
                sum += l * b.len() as f64;
                n += b.len();
                pb.inc(b.len() as u64);
                pb.set_message(format!(
                    "epoch {}/{} loss {:.4} {:.0} samples/s",
                    epoch + 1,
                    train_cfg.epochs,
                    sum / n as f64,
                    n as f64 / start.elapsed().as_secs_f64()
                ));
            }
            pb.finish();
            log.push(EpochLog {
                epoch: epoch + 1,
                loss: sum / n as f64,
                samples_per_s: n as f64 / start.elapsed().as_secs_f64(),
            });
            if pb.is_hidden() && replica.is_lead() {
                eprintln!(
                    "{what}: epoch {}/{} loss {:.4} {:.0} samples/s",
                    epoch + 1,
                    train_cfg.epochs,
                    sum / n as f64,
                    n as f64 / start.elapsed().as_secs_f64()
                );
            }
            let saved = ckpt.map_or(Ok(()), |c| c.save(&model, &optim, &log));
            let failures = saved.is_err() as u8 as f64;
            let [failures] = replica.sum([failures])?;
            saved?;
            if failures > 0.0 {
                return Err(ReplicaStopped.into());
            }
        }
        Ok((model, log))
    }

    fn share_loss<B, M>(&self, model: &M, share: Share, device: &B::Device) -> Result<ShareLoss<B>>
    where
        B: FusedAutodiff,
        M: EngineModel<B, Data = D>,
    {
        let batch = model.batch(self.ds, share.rows, device)?;
        let pass = model.pass(&batch.input, true);
        let (loss, terms) =
            task_loss_terms(pass.logits.as_ref().expect("logits"), &batch, 0..share.rows.len());
        let value = scalar(loss.clone());
        Ok(ShareLoss { loss, terms, value })
    }
}
