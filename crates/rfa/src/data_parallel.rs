//! Data-parallel training: one replica of the model per device, each taking a contiguous share
//! of every batch. Before each optimizer step burn's collective all-reduce sums the replicas'
//! gradients, each share's loss weighted by its part of the batch's terms, so every replica
//! takes the step a single device would take on the whole batch. The lead replica (the first
//! device) saves, reports and is the one returned.
//!
//! Replicas are threads of this process (burn-collective's local level). Across machines burn
//! 0.21 has all-reduce but no reduce or broadcast and needs an orchestrator; that stays off
//! (docs/SCALING.md).

use anyhow::{Result, bail};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;

/// Returned by a replica that stopped because another one failed or was interrupted: the other
/// replica's error is the one to report.
#[derive(Debug, thiserror::Error)]
#[error("stopped: another replica of the data-parallel training stopped")]
pub struct ReplicaStopped;

/// One replica's place in a (possibly single-device) training.
pub struct Replica<B: AutodiffBackend> {
    rank: usize,
    replicas: usize,
    device: B::Device,
}

/// The rows of a batch one replica computes. `counts` is false for a stand-in row that a
/// replica computes only to take part in the step when the batch has fewer rows than replicas;
/// its loss weighs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share<'a> {
    pub rows: &'a [usize],
    pub counts: bool,
}

impl<B: AutodiffBackend> Replica<B> {
    /// The only replica: every operation is the identity.
    pub fn alone(device: B::Device) -> Self {
        Self { rank: 0, replicas: 1, device }
    }

    /// 0 for the lead, 1.. for the others, in the order of the devices.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// One replica: no share to weigh, nothing to sum.
    pub fn is_alone(&self) -> bool {
        self.replicas == 1
    }

    pub fn is_lead(&self) -> bool {
        self.rank == 0
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// This replica's contiguous share of `batch` (sizes differ by at most one row).
    pub fn share<'a>(&self, batch: &'a [usize]) -> Share<'a> {
        let (start, end) = share_bounds(batch.len(), self.rank, self.replicas);
        if start < end || batch.is_empty() {
            Share { rows: &batch[start..end], counts: true }
        } else {
            Share { rows: &batch[..1], counts: false }
        }
    }

    /// `values` summed over the replicas (in f32: counts, losses for the log, flags).
    pub fn sum<const N: usize>(&self, values: [f64; N]) -> Result<[f64; N]> {
        if self.replicas == 1 {
            return Ok(values);
        }
        self.all_reduce_values(values)
    }

    /// The gradients summed over the replicas (each replica's loss already carries its weight).
    pub fn gradients(&self, grads: GradientsParams) -> Result<GradientsParams> {
        if self.replicas == 1 {
            return Ok(grads);
        }
        self.all_reduce_gradients(grads)
    }

    /// What this replica's mean loss over `terms` weighs in the batch's mean over `total` terms.
    pub fn weight(&self, terms: usize, total: f64) -> Option<f64> {
        (self.replicas > 1).then(|| if total > 0.0 { terms as f64 / total } else { 0.0 })
    }

    #[cfg(feature = "collective")]
    fn all_reduce_values<const N: usize>(&self, values: [f64; N]) -> Result<[f64; N]> {
        use burn::collective::{ReduceOperation, all_reduce};
        use burn::tensor::{Tensor, TensorPrimitive};
        let t = Tensor::<B::InnerBackend, 1>::from_floats(values.map(|v| v as f32), &self.device);
        let summed = all_reduce::<B::InnerBackend>(
            self.peer(),
            t.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(|e| {
            anyhow::anyhow!("collective all-reduce of a step's counts and losses: {e:?}")
        })?;
        let v = crate::engine::host(Tensor::<B::InnerBackend, 1>::from_primitive(
            TensorPrimitive::Float(summed),
        ));
        Ok(std::array::from_fn(|i| v[i] as f64))
    }

    #[cfg(feature = "collective")]
    fn all_reduce_gradients(&self, grads: GradientsParams) -> Result<GradientsParams> {
        grads
            .all_reduce::<B::InnerBackend>(self.peer(), burn::collective::ReduceOperation::Sum)
            .map_err(|e| anyhow::anyhow!("collective all-reduce of the gradients: {e:?}"))
    }

    #[cfg(feature = "collective")]
    fn peer(&self) -> burn::collective::PeerId {
        burn::collective::PeerId::from(self.rank as u32)
    }

    #[cfg(not(feature = "collective"))]
    fn all_reduce_values<const N: usize>(&self, _: [f64; N]) -> Result<[f64; N]> {
        unreachable!("replicas exist only in the collective build")
    }

    #[cfg(not(feature = "collective"))]
    fn all_reduce_gradients(&self, _: GradientsParams) -> Result<GradientsParams> {
        unreachable!("replicas exist only in the collective build")
    }
}

/// Rows `[start, end)` of replica `rank` of `replicas` in a batch of `len` rows.
fn share_bounds(len: usize, rank: usize, replicas: usize) -> (usize, usize) {
    (rank * len / replicas, (rank + 1) * len / replicas)
}

/// Runs `lead` on the first device in this thread and `follower` on each other device in a
/// thread of its own, as replicas of one collective. With one device, `lead` alone, as before.
/// The first real error wins over the [`ReplicaStopped`] of the replicas that followed it.
pub fn replicate<B, T>(
    devices: &[B::Device],
    lead: impl FnOnce(&Replica<B>) -> Result<T>,
    follower: impl Fn(&Replica<B>) -> Result<()> + Sync,
) -> Result<T>
where
    B: AutodiffBackend,
{
    match devices {
        [] => bail!("no device given"),
        [device] => lead(&Replica::alone(device.clone())),
        _ => replicate_collective(devices, lead, follower),
    }
}

#[cfg(not(feature = "collective"))]
fn replicate_collective<B: AutodiffBackend, T>(
    devices: &[B::Device],
    _: impl FnOnce(&Replica<B>) -> Result<T>,
    _: impl Fn(&Replica<B>) -> Result<()> + Sync,
) -> Result<T> {
    bail!(
        "data-parallel training over {} devices needs the `collective` build: cargo build --release -p rfa --features collective",
        devices.len()
    )
}

#[cfg(feature = "collective")]
fn replicate_collective<B: AutodiffBackend, T>(
    devices: &[B::Device],
    lead: impl FnOnce(&Replica<B>) -> Result<T>,
    follower: impl Fn(&Replica<B>) -> Result<()> + Sync,
) -> Result<T> {
    use burn::collective::{CollectiveConfig, finish_collective, register, reset_collective};
    use std::sync::Mutex;
    // burn-collective keeps one collective per backend type in the process: one training at a
    // time uses it, and each starts from a fresh one.
    static ONE_COLLECTIVE: Mutex<()> = Mutex::new(());
    let _only = ONE_COLLECTIVE.lock().unwrap_or_else(|p| p.into_inner());
    reset_collective::<B::InnerBackend>();
    let config = CollectiveConfig::default().with_num_devices(devices.len());
    let replicas = devices.len();
    let joined = |rank: usize| -> Result<Replica<B>> {
        let replica = Replica::<B> { rank, replicas, device: devices[rank].clone() };
        register::<B::InnerBackend>(replica.peer(), replica.device.clone(), config.clone())
            .map_err(|e| {
                anyhow::anyhow!("registering replica {rank} with the collective: {e:?}")
            })?;
        Ok(replica)
    };
    let finished = |replica: &Replica<B>| -> Result<()> {
        finish_collective::<B::InnerBackend>(replica.peer())
            .map_err(|e| anyhow::anyhow!("replica {} leaving the collective: {e:?}", replica.rank))
    };
    let (lead_result, follower_results) = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..replicas)
            .map(|rank| {
                let follower = &follower;
                scope.spawn(move || -> Result<()> {
                    let replica = joined(rank)?;
                    follower(&replica)?;
                    finished(&replica)
                })
            })
            .collect();
        let lead_result = joined(0).and_then(|replica| {
            let out = lead(&replica)?;
            finished(&replica)?;
            Ok(out)
        });
        let follower_results: Vec<Result<()>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a replica's thread panicked")))
            .collect();
        (lead_result, follower_results)
    });
    match lead_result {
        Ok(out) => {
            follower_results.into_iter().collect::<Result<Vec<()>>>()?;
            Ok(out)
        }
        Err(e) if e.is::<ReplicaStopped>() => Err(follower_results
            .into_iter()
            .filter_map(Result::err)
            .find(|f| !f.is::<ReplicaStopped>())
            .unwrap_or(e)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type AB = burn::backend::Autodiff<burn::backend::NdArray<f32>>;

    fn replica(rank: usize, replicas: usize) -> Replica<AB> {
        Replica { rank, replicas, device: Default::default() }
    }

    #[test]
    fn shares_cover_the_batch_once_in_order() {
        let batch: Vec<usize> = (10..17).collect();
        for replicas in 1..=4 {
            let rows: Vec<usize> = (0..replicas)
                .flat_map(|r| replica(r, replicas).share(&batch).rows.to_vec())
                .collect();
            assert_eq!(rows, batch, "{replicas} replicas");
            let sizes: Vec<usize> =
                (0..replicas).map(|r| replica(r, replicas).share(&batch).rows.len()).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
        }
    }

    #[test]
    fn a_batch_smaller_than_the_replicas_gives_weightless_stand_ins() {
        let batch = [4, 5];
        let shares: Vec<Share> = (0..3).map(|r| replica(r, 3).share(&batch)).collect();
        let counted: Vec<usize> =
            shares.iter().filter(|s| s.counts).flat_map(|s| s.rows.to_vec()).collect();
        assert_eq!(counted, batch);
        let stand_ins: Vec<&Share> = shares.iter().filter(|s| !s.counts).collect();
        assert_eq!(stand_ins.len(), 1);
        assert_eq!(stand_ins[0].rows.len(), 1, "one row to run the step with");
    }

    #[test]
    fn alone_every_operation_is_the_identity() {
        let r = Replica::<AB>::alone(Default::default());
        assert!(r.is_lead());
        assert_eq!(r.share(&[1, 2, 3]), Share { rows: &[1, 2, 3], counts: true });
        assert_eq!(r.sum([3.0, 1.5, 0.0]).unwrap(), [3.0, 1.5, 0.0]);
        assert_eq!(r.weight(3, 3.0), None, "a single replica's loss is used as it is");
        assert_eq!(replica(1, 2).weight(2, 8.0), Some(0.25));
        assert_eq!(replica(1, 2).weight(0, 0.0), Some(0.0));
    }

    #[cfg(not(feature = "collective"))]
    #[test]
    fn several_devices_without_the_collective_build_name_the_feature() {
        let devices = [Default::default(), Default::default()];
        let e = replicate::<AB, ()>(&devices, |_| Ok(()), |_| Ok(())).unwrap_err().to_string();
        assert!(e.contains("2 devices") && e.contains("--features collective"), "{e}");
    }

    #[test]
    fn one_device_runs_the_lead_alone() {
        let out = replicate::<AB, usize>(
            &[Default::default()],
            |lead| Ok(lead.rank() + 7),
            |_| unreachable!("no followers"),
        );
        assert_eq!(out.unwrap(), 7);
        assert!(replicate::<AB, ()>(&[], |_| Ok(()), |_| Ok(())).is_err());
    }
}
