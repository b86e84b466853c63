//! [`FusedOps`] under burn's autodiff: one node per call whose backward is the analytic
//! derivative, so that every backend gets the right gradient and keeps only what it needs.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use crate::{
    AttentionMask, AttentionSaved, FusedOps, GeluKind, LayerNormSaved, TapSplit, TapTermsSaved,
    TapWeights, fallback,
};

/// The backward pass of every node below: consumes the node's gradient, hands it to
/// `backward` with the node's state and which parents are tracked, and registers the gradients
/// it returns with those parents (untracked parents, and gradients a backward did not compute,
/// get none).
fn backward_node<B: Backend, S, const N: usize>(
    ops: Ops<S, N>,
    grads: &mut Gradients,
    backward: impl FnOnce(S, FloatTensor<B>, [bool; N]) -> [Option<FloatTensor<B>>; N],
) {
    let grad = grads.consume::<B>(&ops.node);
    let need = ops.parents.each_ref().map(Option::is_some);
    if !need.contains(&true) {
        return;
    }
    for (parent, d) in ops.parents.into_iter().zip(backward(ops.state, grad, need)) {
        if let (Some(parent), Some(d)) = (parent, d) {
            grads.register::<B>(parent.id, d);
        }
    }
}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_gelu(x: FloatTensor<Self>, kind: GeluKind) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluBackward(GeluKind);

        impl<B: FusedOps> Backward<B, 1> for GeluBackward {
            type State = NodeId;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state);
                backward_node::<B, _, 1>(ops, grads, |_, grad, _| {
                    [Some(B::fused_gelu_backward(x, grad, self.0))]
                });
            }
        }

        match GeluBackward(kind).prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::fused_gelu(x.primitive, kind))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu(x.primitive, kind)),
        }
    }

    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SoftmaxBackward;

        impl<B: FusedOps> Backward<B, 1> for SoftmaxBackward {
            // The output: the backward needs y, not x.
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                backward_node::<B, _, 1>(ops, grads, |y, grad, _| {
                    [Some(B::fused_softmax_backward(y, grad))]
                });
            }
        }

        match SoftmaxBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::fused_softmax(x.primitive);
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_softmax(x.primitive)),
        }
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: AttentionMask<Self>,
        heads: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: FusedOps> Backward<B, 3> for AttentionBackward {
            // q, k, v (what the decomposed graph keeps too), the bias and two numbers per query
            // row — not the attention weights.
            type State = AttentionSaved<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                backward_node::<B, _, 3>(ops, grads, |saved, grad, _| {
                    B::fused_attention_backward(saved, grad).map(Some)
                });
            }
        }

        let mask = AttentionMask { bias: mask.bias.map(|b| b.primitive), causal: mask.causal };
        let parents = [q.node.clone(), k.node.clone(), v.node.clone()];
        match AttentionBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (q.primitive, k.primitive, v.primitive);
                let (out, stats) = B::fused_attention_stats(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    mask.clone(),
                    heads,
                    scale,
                );
                let kept = B::attention_backward_uses_output().then(|| out.clone());
                prep.finish(
                    AttentionSaved { q, k: Some(k), v: Some(v), mask, stats, scale, out: kept },
                    out,
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention(
                q.primitive,
                k.primitive,
                v.primitive,
                mask,
                heads,
                scale,
            )),
        }
    }

    fn fused_attention_packed(
        qkv: FloatTensor<Self>,
        mask: AttentionMask<Self>,
        heads: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct PackedAttentionBackward;

        impl<B: FusedOps> Backward<B, 1> for PackedAttentionBackward {
            type State = AttentionSaved<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                backward_node::<B, _, 1>(ops, grads, |saved, grad, _| {
                    [Some(B::fused_attention_packed_backward(saved, grad))]
                });
            }
        }

        let mask = AttentionMask { bias: mask.bias.map(|b| b.primitive), causal: mask.causal };
        match PackedAttentionBackward.prepare::<C>([qkv.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let [q, k, v] = fallback::unpack::<B>(qkv.primitive.clone());
                let (out, stats) = B::fused_attention_stats(q, k, v, mask.clone(), heads, scale);
                let kept = B::attention_backward_uses_output().then(|| out.clone());
                prep.finish(
                    AttentionSaved {
                        q: qkv.primitive,
                        k: None,
                        v: None,
                        mask,
                        stats,
                        scale,
                        out: kept,
                    },
                    out,
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_attention_packed(qkv.primitive, mask, heads, scale))
            }
        }
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward;

        impl<B: FusedOps> Backward<B, 3> for LayerNormBackward {
            type State = LayerNormSaved<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                backward_node::<B, _, 3>(ops, grads, B::fused_layer_norm_backward);
            }
        }

        if !B::layer_norm_as_one_node() {
            // burn's definition in this backend's (autodiff) ops: what `nn::LayerNorm` records.
            return <Self as burn::tensor::ops::ModuleOps<Self>>::layer_norm(
                x,
                gamma,
                Some(beta),
                eps,
            );
        }
        let parents = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        match LayerNormBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, saved) =
                    B::fused_layer_norm_forward(x.primitive, gamma.primitive, beta.primitive, eps);
                prep.finish(saved, y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_layer_norm(x.primitive, gamma.primitive, beta.primitive, eps))
            }
        }
    }

    fn tap_terms_as_one_node() -> bool {
        B::tap_terms_as_one_node()
    }

    fn bf16_activations() -> bool {
        B::bf16_activations()
    }

    fn fused_tap_terms(
        pre: FloatTensor<Self>,
        res: FloatTensor<Self>,
        mu: FloatTensor<Self>,
        w: TapWeights<Self>,
        split: TapSplit,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct TapTermsBackward;

        impl<B: FusedOps> Backward<B, 2> for TapTermsBackward {
            type State = TapTermsSaved<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                backward_node::<B, _, 2>(ops, grads, |saved, grad, [need_pre, _]| {
                    fallback::tap_terms_backward::<B>(saved, grad, need_pre)
                });
            }
        }

        // The targets and weights are constants: their values, not their graphs.
        let w = TapWeights {
            retain: w.retain.map(|t| t.primitive),
            forget: w.forget.map(|t| t.primitive),
        };
        let parents = [pre.node.clone(), res.node.clone()];
        match TapTermsBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, saved) = fallback::tap_terms_forward::<B>(
                    pre.primitive,
                    res.primitive,
                    mu.primitive,
                    w,
                    split,
                );
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_tap_terms(
                pre.primitive,
                res.primitive,
                mu.primitive,
                w,
                split,
            )),
        }
    }
}
