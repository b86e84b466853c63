//! `cargo xtask bench-ops`: the operations of one GPT-2 block at a given shape, timed alone,
//! forward and forward + backward, on a backend — where a step's time goes beyond the matrix
//! products. One JSON line per operation.

use std::time::Instant;

use burn::nn::LayerNormConfig;
use burn::tensor::TensorPrimitive;
use burn::tensor::activation::{gelu, gelu_approximate, sigmoid, softmax};
use burn::tensor::{Distribution, Tensor};
use rfa_fused::{GeluKind, attention, attention_packed, fallback, softmax_last};
use rfa_models::{Activation, FusedAutodiff};

use crate::step::median;

/// Median milliseconds of `f` over `reps` runs after one untimed run.
fn time<B: FusedAutodiff>(reps: usize, device: &B::Device, mut f: impl FnMut()) -> f64 {
    f();
    let mut t = Vec::new();
    for _ in 0..reps {
        let s = Instant::now();
        f();
        let _ = B::sync(device);
        t.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    median(t)
}

/// The tanh GELU in burn's element-wise ops, differentiated by burn's autodiff op by op (what the
/// models ran before the fused op).
fn unfused_gelu_tanh<B: burn::tensor::backend::AutodiffBackend>(t: Tensor<B, 3>) -> Tensor<B, 3> {
    Tensor::from_primitive(TensorPrimitive::Float(fallback::gelu::<B>(
        t.into_primitive().tensor(),
        GeluKind::Tanh,
    )))
}

/// Multi-head attention written in burn's ops (what the models ran before the fused op): heads
/// split by reshape + transpose, the bias added as a broadcast op, autodiff op by op.
fn unfused_attention<B: burn::tensor::backend::Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Tensor<B, 4>,
    heads: usize,
) -> Tensor<B, 3> {
    let [b, t, d] = q.dims();
    let split = |x: Tensor<B, 3>| x.reshape([b, t, heads, d / heads]).swap_dims(1, 2);
    let scores =
        split(q).matmul(split(k).swap_dims(2, 3)).mul_scalar(1.0 / ((d / heads) as f64).sqrt())
            + bias;
    softmax(scores, 3).matmul(split(v)).swap_dims(1, 2).reshape([b, t, d])
}

/// Rows for batch × seq tokens of width `d` (MLP 4d, `heads` heads).
pub fn run<B: FusedAutodiff>(
    batch: usize,
    seq: usize,
    d: usize,
    heads: usize,
    reps: usize,
    backend: &str,
    device: &B::Device,
) -> Vec<serde_json::Value> {
    let n = Distribution::Normal(0.0, 1.0);
    let mlp = Tensor::<B, 3>::random([batch, seq, 4 * d], n, device);
    let scores = Tensor::<B, 4>::random([batch, heads, seq, seq], n, device);
    let hidden = Tensor::<B, 3>::random([batch, seq, d], n, device);
    let w = Tensor::<B, 2>::random([d, 4 * d], n, device);
    let ln = LayerNormConfig::new(d).init::<B>(device);
    // GPT-2's attention input: the packed q, k, v projection; a causal bias (for the unfused op
    // and the fused one given it as a bias) or the causal flag (what GPT-2 runs).
    let qkv = Tensor::<B, 3>::random([batch, seq, 3 * d], n, device);
    let causal: Vec<f32> =
        (0..seq * seq).map(|i| if i % seq > i / seq { -1.0e30 } else { 0.0 }).collect();
    let causal =
        Tensor::<B, 4>::from_data(burn::tensor::TensorData::new(causal, [1, 1, seq, seq]), device);
    let mut rows = Vec::new();
    let mut row = |op: &str,
                   shape: Vec<usize>,
                   elems: usize,
                   fwd: f64,
                   fwd_bwd: f64,
                   flops: f64| {
        rows.push(serde_json::json!({
            "op": op, "backend": backend, "shape": shape,
            "forward_ms": (fwd * 1000.0).round() / 1000.0,
            "forward_backward_ms": (fwd_bwd * 1000.0).round() / 1000.0,
            "forward_melem_per_s": (elems as f64 / fwd / 1e3).round(),
            "forward_gflops": if flops > 0.0 { ((flops / fwd / 1e6) * 10.0).round() / 10.0 } else { 0.0 },
        }));
    };
    // Each backward starts from a tracked copy so that only this op's gradient is computed.
    macro_rules! op {
        ($name:expr, $x:expr, $f:expr, $flops:expr) => {{
            let x = $x.clone();
            let fwd = time::<B>(reps, device, || {
                let _ = $f(x.clone().detach()).into_data();
            });
            let fb = time::<B>(reps, device, || {
                let t = x.clone().require_grad();
                let _ = $f(t.clone()).sum().backward();
            });
            row($name, x.dims().to_vec(), x.shape().num_elements(), fwd, fb, $flops);
        }};
    }
    op!("gelu erf (burn)", mlp, |t: Tensor<B, 3>| gelu(t), 0.0);
    op!("gelu erf (rfa, fused)", mlp, |t: Tensor<B, 3>| Activation::Gelu.forward(t), 0.0);
    op!("gelu tanh (burn)", mlp, |t: Tensor<B, 3>| gelu_approximate(t), 0.0);
    op!("gelu tanh (rfa, fused)", mlp, |t: Tensor<B, 3>| Activation::GeluTanh.forward(t), 0.0);
    op!("gelu tanh (burn ops, x·σ(2u))", mlp, |t: Tensor<B, 3>| unfused_gelu_tanh(t), 0.0);
    op!("tanh", mlp, |t: Tensor<B, 3>| t.tanh(), 0.0);
    op!("sigmoid", mlp, |t: Tensor<B, 3>| sigmoid(t), 0.0);
    op!("exp", mlp, |t: Tensor<B, 3>| t.exp(), 0.0);
    op!("mul", mlp, |t: Tensor<B, 3>| t.clone() * t, 0.0);
    op!("softmax (burn)", scores, |t: Tensor<B, 4>| softmax(t, 3), 0.0);
    op!("softmax (rfa, fused)", scores, |t: Tensor<B, 4>| softmax_last(t), 0.0);
    op!("layer_norm", hidden, |t: Tensor<B, 3>| ln.forward(t), 0.0);
    op!("add", mlp, |t: Tensor<B, 3>| t.clone() + t, 0.0);
    let split = |t: Tensor<B, 3>| {
        (t.clone().narrow(2, 0, d), t.clone().narrow(2, d, d), t.narrow(2, 2 * d, d))
    };
    let flops = 4.0 * (batch * seq * seq * d) as f64;
    op!(
        "attention (burn ops)",
        qkv,
        |t: Tensor<B, 3>| {
            let (q, k, v) = split(t);
            unfused_attention(q, k, v, causal.clone(), heads)
        },
        flops
    );
    op!(
        "attention (rfa, fused)",
        qkv,
        |t: Tensor<B, 3>| {
            let (q, k, v) = split(t);
            attention(
                q,
                k,
                v,
                Some(causal.clone()),
                false,
                heads,
                1.0 / ((d / heads) as f64).sqrt(),
            )
        },
        flops
    );
    op!(
        "attention, packed q·k·v, causal flag (rfa, fused)",
        qkv,
        |t: Tensor<B, 3>| attention_packed(t, None, true, heads, 1.0 / ((d / heads) as f64).sqrt()),
        flops
    );
    let flops = 2.0 * (batch * seq * d * 4 * d) as f64;
    op!(
        "matmul [b·t, d] × [d, 4d]",
        hidden,
        |t: Tensor<B, 3>| t.matmul(w.clone().unsqueeze::<3>()),
        flops
    );
    // The products of a LoRA step as the models issue them (2-d views, `LoraLinear`): the frozen
    // forward, the input gradient through the transposed weight (a strided view, not a copy),
    // the adapter's down projection and its weight gradient (inner dimension = all tokens), and
    // attention's per-head scores. Matmul rate per shape is what separates backends on a GPU.
    let tokens = batch * seq;
    let rank = 8;
    let x2 = hidden.clone().reshape([tokens, d]);
    let g2 = mlp.clone().reshape([tokens, 4 * d]);
    let a = Tensor::<B, 2>::random([d, rank], n, device);
    let g_low = Tensor::<B, 2>::random([tokens, rank], n, device);
    op!("matmul x·W [b·t, d] × [d, 4d] (2-d)", x2, |t: Tensor<B, 2>| t.matmul(w.clone()), flops);
    op!(
        "matmul dY·Wᵀ [b·t, 4d] × [d, 4d]ᵀ",
        g2,
        |t: Tensor<B, 2>| t.matmul(w.clone().transpose()),
        flops
    );
    let flops = 2.0 * (tokens * d * rank) as f64;
    op!("matmul x·A [b·t, d] × [d, r]", x2, |t: Tensor<B, 2>| t.matmul(a.clone()), flops);
    op!(
        "matmul xᵀ·G [b·t, d]ᵀ × [b·t, r]",
        x2,
        |t: Tensor<B, 2>| t.transpose().matmul(g_low.clone()),
        flops
    );
    let dh = d / heads;
    let q4 = Tensor::<B, 4>::random([batch, heads, seq, dh], n, device);
    let k4 = Tensor::<B, 4>::random([batch, heads, dh, seq], n, device);
    let flops = 2.0 * (batch * heads * seq * seq * dh) as f64;
    op!(
        "matmul q·kᵀ per head [b, h, t, d/h] × [b, h, d/h, t]",
        q4,
        |t: Tensor<B, 4>| t.matmul(k4.clone()),
        flops
    );
    rows
}
