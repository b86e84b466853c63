//! The adapted linear layer: a frozen base plus an optional low-rank residual.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

/// How the base weight of a layer is laid out in its Hugging Face checkpoint.
///
/// In memory every base weight is `[in, out]` (burn's layout); the checkpoint layout only
/// matters when reading or writing Hugging Face files and for PEFT's `fan_in_fan_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightLayout {
    /// `torch.nn.Linear`: stored `[out, in]`.
    #[default]
    Linear,
    /// GPT-2's `Conv1D`: stored `[in, out]` (PEFT's `fan_in_fan_out = true`).
    Conv1D,
}

/// `x` in `dtype`: no op, and no autodiff node, when it already is.
pub fn to_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// Low-rank adapter `s · B A`: `A` is `[in, r]`, `B` is `[r, out]`, `s = alpha / r`
/// (or `alpha / sqrt(r)` with rsLoRA).
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    pub lora_a: Param<Tensor<B, 2>>,
    pub lora_b: Param<Tensor<B, 2>>,
    pub scale: f64,
    pub r: usize,
    pub alpha: f64,
    pub rslora: bool,
}

impl<B: Backend> LoraAdapter<B> {
    /// PEFT's default initialisation: A ~ Kaiming-uniform (a = sqrt(5)), i.e. U(-1/sqrt(in),
    /// 1/sqrt(in)); B = 0, so the adapted layer starts exactly at the base layer. A is drawn on
    /// the host from `seed` (SplitMix64), so a seed gives the same adapter on every backend and
    /// in every process.
    pub fn init(
        d_in: usize,
        d_out: usize,
        r: usize,
        alpha: f64,
        rslora: bool,
        seed: u64,
        device: &B::Device,
    ) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        let mut rng = rfa_rng::SplitMix64::new(seed);
        let values: Vec<f32> =
            (0..d_in * r).map(|_| ((2.0 * rng.next_unit() - 1.0) * bound) as f32).collect();
        let a = Tensor::from_data(TensorData::new(values, [d_in, r]), device);
        let b = Tensor::zeros([r, d_out], device);
        Self::from_tensors(a, b, alpha, rslora)
    }

    /// Builds an adapter from `A [in, r]` and `B [r, out]`.
    pub fn from_tensors(a: Tensor<B, 2>, b: Tensor<B, 2>, alpha: f64, rslora: bool) -> Self {
        let r = a.dims()[1];
        let scale = if rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
        Self {
            lora_a: Param::from_tensor(a),
            lora_b: Param::from_tensor(b),
            scale,
            r,
            alpha,
            rslora,
        }
    }

    /// `s · (x A) B`, in x's float type: a bf16 input (an autocast-style bf16 block) multiplies
    /// bf16 copies of A and B, as peft's layers do under autocast; A and B stay f32, and so do
    /// their gradients and the optimizer's state (the casts' backward casts back).
    ///
    /// Both products run on a `[rows, in]` view of x, as single GEMMs (as peft's `nn.Linear`
    /// layers do): broadcasting A `[1, in, r]` against `[batch, seq, in]` instead makes
    /// autodiff compute A's gradient as `batch` small products `[in, seq] × [seq, r]` and sum
    /// them, where one product over all rows does it.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dt = x.dtype();
        let mut dims = x.dims();
        let d_in = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        let x: Tensor<B, 2> = x.reshape([rows, d_in]);
        let y = x
            .matmul(to_dtype(self.lora_a.val(), dt))
            .matmul(to_dtype(self.lora_b.val(), dt))
            .mul_scalar(self.scale);
        dims[D - 1] = y.dims()[1];
        y.reshape(dims)
    }

    /// The dense update `s · A B`, `[in, out]`.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_a.val().matmul(self.lora_b.val()).mul_scalar(self.scale)
    }
}

/// A linear layer with frozen base weights and an optional LoRA adapter.
///
/// `forward(x) = W0 x + b + s · B A x`; [`LoraLinear::split`] returns the two parts separately
/// (the pre-trained feature and the residual feature of the RFA method).
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    pub base: Linear<B>,
    pub lora: Option<LoraAdapter<B>>,
    /// Checkpoint layout of `base.weight`, kept for export and for PEFT's `fan_in_fan_out`.
    pub layout: WeightLayout,
    /// Set while the adapter is folded into `base` (see [`LoraLinear::merge`]).
    pub merged: bool,
}

impl<B: Backend> LoraLinear<B> {
    /// A frozen layer from a weight already in burn's `[in, out]` layout.
    pub fn from_weights(
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
        layout: WeightLayout,
    ) -> Self {
        let base = Linear {
            weight: Param::from_tensor(weight).set_require_grad(false),
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
        };
        Self { base, lora: None, layout, merged: false }
    }

    pub fn d_in(&self) -> usize {
        self.base.weight.shape().dims::<2>()[0]
    }

    pub fn d_out(&self) -> usize {
        self.base.weight.shape().dims::<2>()[1]
    }

    /// The float type the frozen weight is stored in (see [`LoraLinear::set_base_dtype`]).
    pub fn weight_dtype(&self) -> DType {
        self.base.weight.val().dtype()
    }

    /// `(pre-trained feature W0 x + b, residual feature s · B A x)`. Without an adapter, or while
    /// merged, the residual is `None`.
    pub fn split<const D: usize>(&self, x: Tensor<B, D>) -> (Tensor<B, D>, Option<Tensor<B, D>>) {
        match (&self.lora, self.merged) {
            (Some(lora), false) => {
                let residual = lora.forward(x.clone());
                (self.base_forward(x), Some(residual))
            }
            _ => (self.base_forward(x), None),
        }
    }

    /// `x W0 + b`. When `W0` is stored in another float type than `x` (see
    /// [`LoraLinear::set_base_dtype`]), the product runs in W0's type and is cast back: frozen
    /// matrix products in bf16, everything else — adapter, bias, norms, the loss — at x's
    /// precision. An x already in W0's type (a model's bf16 block interior, as under PyTorch's
    /// autocast) needs no cast: product, bias and adapter all run in bf16.
    ///
    /// The product runs on a `[rows, in]` view of x, as one GEMM: burn's `linear` op broadcasts
    /// a 2-d weight against a 3-d input by reshaping its transpose in the backward pass, which
    /// burn-flex does by copying the weight. Measured on flex (interleaved runs on a 2-core
    /// machine, fastest step per run): GPT-2 small step 3.35–3.50 s against 4.0–4.6 s through
    /// `Linear::forward` and 4.0–4.4 s as a batched product with the weight unsqueezed; the
    /// demo's ViT 17.0–17.7 ms against 19.0–20.2 ms. The view is free for contiguous inputs.
    fn base_forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut out = x.dims();
        let d_in = out[D - 1];
        out[D - 1] = self.d_out();
        let x: Tensor<B, 2> = x.reshape([out[..D - 1].iter().product::<usize>(), d_in]);
        let w = self.base.weight.val();
        let dt = x.dtype();
        let y = if w.dtype() == dt { x.matmul(w) } else { x.cast(w.dtype()).matmul(w).cast(dt) };
        let y = match &self.base.bias {
            // The bias stays f32 (see set_base_dtype); a bf16 product takes it in bf16, as addmm
            // does under autocast.
            Some(b) => {
                let dt = y.dtype();
                y + to_dtype(b.val(), dt).unsqueeze::<2>()
            }
            None => y,
        };
        y.reshape(out)
    }

    /// Stores the frozen base weight in `dtype` (bias stays): halves its memory and runs its
    /// product on bf16 tensor cores. Lossy (bf16 keeps 8 mantissa bits): keep the original
    /// weights elsewhere for export.
    pub fn set_base_dtype(&mut self, dtype: DType) {
        if self.base.weight.val().dtype() != dtype {
            let w = self.base.weight.val().cast(dtype);
            self.base.weight = Param::from_tensor(w).set_require_grad(false);
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self.split(x) {
            (p, Some(r)) => p + r,
            (p, None) => p,
        }
    }

    /// Attaches a fresh adapter (B = 0, A drawn from `seed`), replacing any existing one.
    pub fn attach(&mut self, r: usize, alpha: f64, rslora: bool, seed: u64) {
        let device = self.base.weight.device();
        self.lora =
            Some(LoraAdapter::init(self.d_in(), self.d_out(), r, alpha, rslora, seed, &device));
        self.merged = false;
    }

    /// Folds the adapter into the base weight: `W0 ← W0 + s · A B`. The adapter is kept so that
    /// [`LoraLinear::unmerge`] can undo it. A no-op without an adapter or when already merged.
    pub fn merge(&mut self) {
        if let (Some(lora), false) = (&self.lora, self.merged) {
            let w = self.base.weight.val();
            let dt = w.dtype();
            let w = w + lora.delta_weight().cast(dt);
            self.base.weight = Param::from_tensor(w).set_require_grad(false);
            self.merged = true;
        }
    }

    /// Undoes [`LoraLinear::merge`] (exact up to float rounding).
    pub fn unmerge(&mut self) {
        if let (Some(lora), true) = (&self.lora, self.merged) {
            let w = self.base.weight.val();
            let dt = w.dtype();
            let w = w - lora.delta_weight().cast(dt);
            self.base.weight = Param::from_tensor(w).set_require_grad(false);
            self.merged = false;
        }
    }

    /// Merges and drops the adapter (PEFT's `merge_and_unload`).
    pub fn merge_and_unload(&mut self) {
        self.merge();
        self.lora = None;
        self.merged = false;
    }
}
