//! GPT-2 text generation: greedy picks the arg-max of a full forward pass; top-k samples stay in
//! the top k and repeat under the same seed.

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{B, device, fixtures};
use rfa_models::Gpt2LmHeadModel;

fn model() -> Gpt2LmHeadModel<B> {
    Gpt2LmHeadModel::load(&fixtures().join("hf-parity/gpt2/model"), &device()).unwrap()
}

fn last_logits(m: &Gpt2LmHeadModel<B>, ids: &[u32]) -> Vec<f32> {
    let n = ids.len();
    let t = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, n]),
        &device(),
    );
    m.forward(t, None)
        .logits
        .narrow(1, n - 1, 1)
        .reshape([m.vocab_size()])
        .into_data()
        .into_vec()
        .unwrap()
}

#[test]
fn greedy_follows_the_argmax_of_the_forward_pass() {
    let m = model();
    let prompt = [5u32, 17, 300];
    let out = m.generate(&prompt, 6, None, 1.0, None, 0);
    assert_eq!(out.len(), 6);
    let mut ids = prompt.to_vec();
    for &tok in &out {
        let l = last_logits(&m, &ids);
        let argmax = l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
        assert_eq!(tok, argmax);
        ids.push(tok);
    }
    assert_eq!(m.generate(&prompt, 6, Some(1), 1.0, None, 99), out, "top-1 is greedy");
}

#[test]
fn top_k_sampling_is_seeded_and_stays_in_the_top_k() {
    let m = model();
    let prompt = [42u32, 7];
    let a = m.generate(&prompt, 5, Some(5), 1.0, None, 1234);
    assert_eq!(a, m.generate(&prompt, 5, Some(5), 1.0, None, 1234));
    let mut ids = prompt.to_vec();
    for &tok in &a {
        let l = last_logits(&m, &ids);
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&x, &y| l[y].total_cmp(&l[x]));
        assert!(order[..5].contains(&(tok as usize)));
        ids.push(tok);
    }
    let others: Vec<Vec<u32>> =
        (0..8).map(|s| m.generate(&prompt, 5, Some(50), 1.5, None, s)).collect();
    assert!(
        others.iter().any(|o| o != &others[0]),
        "different seeds should give different samples"
    );
}

#[test]
fn generation_stops_at_eos_and_slides_past_the_context() {
    let m = model();
    let prompt = [1u32, 2, 3];
    let first = m.generate(&prompt, 1, None, 1.0, None, 0)[0];
    assert_eq!(m.generate(&prompt, 10, None, 1.0, Some(first), 0), vec![first]);
    // n_positions is 64: a long prompt plus generation must not index past the position table.
    let long: Vec<u32> = (0..70).map(|i| (i * 7 % 500) as u32).collect();
    assert_eq!(m.generate(&long, 3, None, 1.0, None, 0).len(), 3);
}
