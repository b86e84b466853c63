//! The forget targets `mu_l`: how they are chosen ([`TargetStrategy`]), resolved from the retain
//! statistics ([`Targets`]), and which class each forget sample is sent to.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::{FeatureStats, LossError, TokenTargets};

/// How the forget target `mu_l` is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TargetStrategy {
    /// Mean of `p_l` over all of `Dr` (default).
    #[default]
    GlobalMean,
    /// Mean of `p_l` over the retain samples of the class nearest to the sample's own class
    /// (distance between class means, summed over layers).
    ClassMeanNearest,
    /// Mean of `p_l` over the retain samples of a random other class (seeded).
    ClassMeanRandom,
    /// Class-wise forgetting: for each forgotten sample, the mean of `p_l` over the retain
    /// samples of the class M0 ranks highest after the sample's own (and after every class with
    /// no retain sample) — what a retrained model tends to predict for it.
    RunnerUpClassMean,
    /// Random / id-list forgetting: the mean of `p_l` over the retain samples of the sample's own
    /// class, which keeps what the class shares and removes what is specific to the sample.
    OwnClassMean,
    /// `mu_l = 0`.
    Zero,
    /// Mean of `p_l` over `Dr` at each token position (sequence models).
    PerPositionMean,
    /// Language models: each forgotten token's target is the mean of `p_l` over Dr's tokens with
    /// the same input id ([`TokenStats`]; the global mean for an id Dr lacks).
    OwnTokenMean,
    /// Random / id-list forgetting: the midpoint of the sample's own class mean and the mean of
    /// the class M0 ranks next over Dr ([`boundary_targets`]): near the boundary between the
    /// two, so that Df ends uncertain rather than wrong, as unseen data is.
    BoundaryMean,
}

impl TargetStrategy {
    pub const ALL: [TargetStrategy; 9] = [
        Self::GlobalMean,
        Self::ClassMeanNearest,
        Self::ClassMeanRandom,
        Self::RunnerUpClassMean,
        Self::OwnClassMean,
        Self::Zero,
        Self::PerPositionMean,
        Self::OwnTokenMean,
        Self::BoundaryMean,
    ];

    /// Whether each forget sample is sent to a class's mean (and so needs class labels).
    pub fn by_class(self) -> bool {
        matches!(
            self,
            Self::ClassMeanNearest
                | Self::ClassMeanRandom
                | Self::RunnerUpClassMean
                | Self::OwnClassMean
                | Self::BoundaryMean
        )
    }

    /// The name as configurations spell it (`global-mean`, `runner-up-class-mean`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::GlobalMean => "global-mean",
            Self::ClassMeanNearest => "class-mean-nearest",
            Self::ClassMeanRandom => "class-mean-random",
            Self::RunnerUpClassMean => "runner-up-class-mean",
            Self::OwnClassMean => "own-class-mean",
            Self::Zero => "zero",
            Self::PerPositionMean => "per-position-mean",
            Self::OwnTokenMean => "own-token-mean",
            Self::BoundaryMean => "boundary-mean",
        }
    }
}

impl std::fmt::Display for TargetStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The forget targets, resolved once before unlearning.
#[derive(Debug, Clone)]
pub enum Targets<B: Backend> {
    /// One `[d_l]` vector per layer (global mean, zero).
    Shared(Vec<Tensor<B, 1>>),
    /// Per layer `[classes, d_l]` class means; each forget sample is sent to the mean of its
    /// target class ([`target_classes`]).
    ByClass(Vec<Tensor<B, 2>>),
    /// Per layer `[positions, d_l]`.
    ByPosition(Vec<Tensor<B, 2>>),
    /// `own-token-mean`: by the forget tokens' ids ([`TokenTargets::for_batch`]).
    ByToken(TokenTargets<B>),
}

impl<B: Backend> Targets<B> {
    /// The same targets on `device` (a data-parallel replica's).
    pub fn to_device(&self, device: &B::Device) -> Self {
        let moved = |ts: &[Tensor<B, 2>]| ts.iter().map(|t| t.clone().to_device(device)).collect();
        match self {
            Self::Shared(mu) => {
                Self::Shared(mu.iter().map(|t| t.clone().to_device(device)).collect())
            }
            Self::ByClass(mu) => Self::ByClass(moved(mu)),
            Self::ByPosition(mu) => Self::ByPosition(moved(mu)),
            Self::ByToken(t) => Self::ByToken(t.to_device(device)),
        }
    }

    pub fn resolve(strategy: TargetStrategy, stats: &FeatureStats<B>) -> Result<Self, LossError> {
        let global = stats.global_mean()?;
        Ok(match strategy {
            TargetStrategy::GlobalMean => Self::Shared(global),
            TargetStrategy::Zero => {
                Self::Shared(global.into_iter().map(|m| m.zeros_like()).collect())
            }
            s if s.by_class() => Self::ByClass(stats.class_means()),
            TargetStrategy::OwnTokenMean => return Err(LossError::NeedsTokenIds),
            _ => Self::ByPosition(stats.position_means()),
        })
    }

    /// The per-layer targets for a forget batch of `batch × seq` tokens, broadcastable against
    /// the taps: `[1, 1, d]`, `[batch, 1, d]` (by class: `classes` holds each row's target
    /// class) or `[1, seq, d]` (by position).
    pub fn for_batch(
        &self,
        batch: usize,
        seq: usize,
        classes: Option<&[usize]>,
    ) -> Result<Vec<Tensor<B, 3>>, LossError> {
        Ok(match self {
            Self::Shared(mu) => mu.iter().map(|m| m.clone().reshape([1, 1, m.dims()[0]])).collect(),
            Self::ByClass(means) => {
                let classes = classes.unwrap_or(&[]);
                let n = means.first().map_or(0, |m| m.dims()[0]);
                let idx: Vec<i64> = (0..batch)
                    .map(|i| {
                        let c = classes.get(i).copied().unwrap_or(0);
                        if c < n {
                            Ok(c as i64)
                        } else {
                            Err(LossError::ClassOutOfRange { class: c, classes: n })
                        }
                    })
                    .collect::<Result<_, _>>()?;
                means
                    .iter()
                    .map(|m| {
                        let d = m.dims()[1];
                        let ix = Tensor::<B, 1, Int>::from_data(
                            TensorData::new(idx.clone(), [batch]),
                            &m.device(),
                        );
                        m.clone().select(0, ix).reshape([batch, 1, d])
                    })
                    .collect()
            }
            Self::ByPosition(means) => means
                .iter()
                .map(|m| {
                    let [t, d] = m.dims();
                    let take = seq.min(t);
                    let part = m.clone().narrow(0, 0, take);
                    let full = if take < seq {
                        Tensor::cat(vec![part, Tensor::zeros([seq - take, d], &m.device())], 0)
                    } else {
                        part
                    };
                    full.reshape([1, seq, d])
                })
                .collect(),
            Self::ByToken(_) => return Err(LossError::NeedsTokenIds),
        })
    }
}

/// For class-mean targets, the class each forget sample is sent to (one per entry of
/// `labels`); `None` for the other strategies. `logits` are M0's `[samples, classes]` logits on
/// the forget samples, row-major (read by `runner-up-class-mean` only). Classes without retain
/// samples are never chosen.
pub fn target_classes<B: Backend>(
    strategy: TargetStrategy,
    stats: &FeatureStats<B>,
    labels: &[usize],
    logits: Option<&[f32]>,
    seed: u64,
) -> Result<Option<Vec<usize>>, LossError> {
    let classes = stats.classes;
    if let Some(&c) = labels.iter().find(|&&c| c >= classes) {
        return Err(LossError::ClassOutOfRange { class: c, classes });
    }
    Ok(Some(match strategy {
        TargetStrategy::ClassMeanNearest | TargetStrategy::ClassMeanRandom => {
            let sub =
                stats.substitute_classes(strategy == TargetStrategy::ClassMeanNearest, seed)?;
            labels.iter().map(|&c| sub[c]).collect()
        }
        TargetStrategy::OwnClassMean => labels
            .iter()
            .map(|&c| {
                if stats.class_count[c] > 0.0 {
                    Ok(c)
                } else {
                    Err(LossError::NoOwnClass { class: c })
                }
            })
            .collect::<Result<_, _>>()?,
        TargetStrategy::RunnerUpClassMean | TargetStrategy::BoundaryMean => {
            let logits = logits.unwrap_or(&[]);
            if logits.len() != labels.len() * classes {
                return Err(LossError::LogitShape {
                    what: "runner-up / boundary targets",
                    found: logits.len(),
                    samples: labels.len(),
                    classes,
                });
            }
            labels
                .iter()
                .enumerate()
                .map(|(i, &own)| {
                    let row = &logits[i * classes..(i + 1) * classes];
                    (0..classes)
                        .filter(|&c| c != own && stats.class_count[c] > 0.0)
                        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                        .ok_or(LossError::NoOtherClass { class: own })
                })
                .collect::<Result<_, _>>()?
        }
        _ => return Ok(None),
    }))
}

/// `boundary-mean`: per forgotten sample, the midpoint of its own class's mean and its
/// runner-up class's mean (`runner_up`, from [`target_classes`]), per layer. Returns the targets
/// as [`Targets::ByClass`] over a table of the used midpoints, and each sample's row in it.
pub fn boundary_targets<B: Backend>(
    stats: &FeatureStats<B>,
    labels: &[usize],
    runner_up: &[usize],
) -> Result<(Targets<B>, Vec<usize>), LossError> {
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let mut rows = Vec::with_capacity(labels.len());
    for (&own, &next) in labels.iter().zip(runner_up) {
        if stats.class_count.get(own).is_none_or(|&c| c == 0.0) {
            return Err(LossError::NoOwnClass { class: own });
        }
        let row = pairs.iter().position(|&p| p == (own, next)).unwrap_or_else(|| {
            pairs.push((own, next));
            pairs.len() - 1
        });
        rows.push(row);
    }
    let means = stats.class_means();
    let table = means
        .iter()
        .map(|m| {
            let device = m.device();
            let pick = |c: Vec<i64>| {
                let n = c.len();
                m.clone()
                    .select(0, Tensor::<B, 1, Int>::from_data(TensorData::new(c, [n]), &device))
            };
            let own = pick(pairs.iter().map(|p| p.0 as i64).collect());
            let next = pick(pairs.iter().map(|p| p.1 as i64).collect());
            (own + next).div_scalar(2.0)
        })
        .collect();
    Ok((Targets::ByClass(table), rows))
}
