//! The host side of the `own-token-mean` target: which token ids the forgotten texts hold, and
//! the ids of a batch's rows ([`rfa_loss::TokenStats`] keeps the means).

use std::ops::Range;

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;
use rfa_data::batches;
use rfa_loss::TokenStats;
use rfa_models::FusedOps;

use crate::engine_model::{EngineModel, Input};
use crate::task::Task;

/// The `[rows, seq]` token ids and mask (1 = real token) of `rows` of a token batch, row-major;
/// `None` for images.
pub fn token_ids<B: Backend>(input: &Input<B>, rows: Range<usize>) -> Option<(Vec<i64>, Vec<f32>)> {
    let Input::Tokens { ids, mask } = input else { return None };
    let n = rows.len();
    let host_ids = ids.clone().narrow(0, rows.start, n).into_data().convert::<i64>();
    let host_mask = mask.clone().narrow(0, rows.start, n).into_data().convert::<f32>();
    Some((host_ids.into_vec().expect("i64"), host_mask.into_vec().expect("f32")))
}

/// Token statistics that track every id of Df's real tokens.
pub fn forget_vocabulary<B: FusedOps, M: EngineModel<B>>(
    model: &M,
    task: &Task<M::Data>,
    device: &B::Device,
) -> Result<TokenStats> {
    let mut ids = Vec::new();
    for b in batches(&task.split.forget, 64, false, 0) {
        let batch = model.batch(&task.train, &b, device)?;
        let Some((i, m)) = token_ids(&batch.input, 0..b.len()) else {
            bail!(
                "unlearn.target = \"own-token-mean\" needs token inputs; a {} reads pixels",
                M::KIND
            )
        };
        ids.extend(i.into_iter().zip(m).filter(|(_, m)| *m > 0.0).map(|(i, _)| i));
    }
    Ok(TokenStats::new(ids))
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::{Int, Tensor, TensorData};

    use super::*;

    #[test]
    fn the_ids_of_a_row_range_come_back_row_major() {
        type B = NdArray<f32>;
        let d = Default::default();
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64, 2, 3, 4, 5, 6], [3, 2]), &d);
        let mask =
            Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64, 1, 1, 0, 1, 1], [3, 2]), &d);
        let input = Input::Tokens { ids, mask };
        assert_eq!(token_ids(&input, 1..3), Some((vec![3, 4, 5, 6], vec![1.0, 0.0, 1.0, 1.0])));
        let pixels = Input::<B>::Pixels(Tensor::zeros([1, 1, 2, 2], &d));
        assert_eq!(token_ids(&pixels, 0..1), None);
    }
}
