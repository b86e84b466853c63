//! Multi-head attention on burn-flex in f32, forward and backward, one task per (batch, head).
//!
//! Why: written in burn's ops, attention splits the heads with a reshape + transpose, adds the
//! mask as a broadcast binary op, merges the heads with another transpose + reshape, and autodiff
//! repeats each in the backward pass; on flex every one of those is a strided copy (≈ 8 % of the
//! GPT-2-small step in the profile). Here each head's products read `q`, `k`, `v` where they lie
//! — usually column slices of one fused projection — through gemm's strides, the scores of a
//! head stay in cache between the two products, and the context is written straight into the
//! `[batch, seq, heads · d]` layout the output projection reads. The backward pass recomputes a
//! head's weights from its scores and the forward pass's row max and sum — the same operations
//! on the same values, so the same weights — instead of keeping `tq × tk` values per head.
//!
//! With the causal flag (GPT-2) the query rows go in blocks of [`CAUSAL_BLOCK`], each block's
//! products stopping at the last key its rows see: at 512 tokens about half the work of the full
//! `tq × tk` products, which the bias-only path computes and then masks.

use burn::tensor::{Bytes, DType, Shape, TensorMetadata};
use burn_flex::{Flex, FlexTensor, Layout};
use rayon::prelude::*;

use super::{AttentionDims, AttentionSaved};

/// A `[batch, seq, width]` f32 operand as it lies in memory: any strides.
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    start: isize,
    strides: [isize; 3],
}

impl<'a> Operand<'a> {
    fn new(t: &'a FlexTensor) -> Self {
        let l = t.layout();
        let s = l.strides();
        Self {
            data: t.storage::<f32>(),
            start: l.start_offset() as isize,
            strides: [s[0], s[1], s[2]],
        }
    }

    /// The `[seq, d]` block of head `h` (width `d`) in batch `b`.
    fn head(&self, b: usize, h: usize, d: usize) -> *const f32 {
        let off = self.start + b as isize * self.strides[0] + (h * d) as isize * self.strides[2];
        self.data.as_ptr().wrapping_offset(off)
    }

    fn row_stride(&self) -> isize {
        self.strides[1]
    }

    fn col_stride(&self) -> isize {
        self.strides[2]
    }
}

/// An output buffer that tasks write disjoint blocks of.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes its own (batch, head) block; nobody reads until all tasks are done.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element at `offset` (a method, so that closures capture the whole `Out`, not its
    /// raw pointer).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Query rows per block under the causal flag: small enough that the skipped keys add up
/// (a 512-token head does 56 % of the full products), large enough for gemm's blocking.
const CAUSAL_BLOCK: usize = 64;

/// The query row blocks `[r0, r1)` of a head and the keys `[0, n)` they see: one block of all
/// keys without the causal flag, [`CAUSAL_BLOCK`] rows up to the last one's key with it (query
/// `i` sees keys `j <= i`, top-left aligned).
fn row_blocks(
    d: &AttentionDims,
    causal: bool,
) -> impl Iterator<Item = (usize, usize, usize)> + use<> {
    let (tq, tk) = (d.tq, d.tk);
    let step = if causal { CAUSAL_BLOCK } else { tq.max(1) };
    (0..tq).step_by(step).map(move |r0| {
        let r1 = (r0 + step).min(tq);
        (r0, r1, if causal { r1.min(tk) } else { tk })
    })
}

/// `dst[m × n] = beta · lhs[m × k] · rhs[k × n]` (`+=` with `accumulate`), each matrix given by a
/// pointer and its row and column strides (`dst`'s columns are contiguous); single-threaded, the
/// caller runs tasks in parallel.
///
/// SAFETY: the pointers address matrices of those sizes and strides; `dst` is read only when
/// accumulating.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
    accumulate: bool,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            if accumulate { 1.0f32 } else { 0.0 },
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// A bias `[b|1, heads|1, tq|1, tk]` made contiguous, with zero strides on broadcast dimensions.
struct Bias {
    t: FlexTensor,
    strides: [usize; 3],
}

impl Bias {
    fn new(bias: &FlexTensor, d: &AttentionDims) -> Self {
        let shape = bias.shape();
        // A broadcast key dimension is expanded so that every row is a slice.
        let bias = if shape[3] == 1 && d.tk != 1 {
            let rows = [(shape[1] * shape[2]) as isize, shape[2] as isize, 1, 0];
            let expanded =
                Layout::new(Shape::new([shape[0], shape[1], shape[2], d.tk]), rows.to_vec(), 0);
            bias.to_contiguous().with_layout(expanded).to_contiguous()
        } else {
            bias.to_contiguous()
        };
        let [b0, b1, b2] = [shape[0], shape[1], shape[2]];
        let tk = d.tk;
        let strides = [
            if b0 == 1 { 0 } else { b1 * b2 * tk },
            if b1 == 1 { 0 } else { b2 * tk },
            if b2 == 1 { 0 } else { tk },
        ];
        Self { t: bias, strides }
    }

    fn row(&self, b: usize, h: usize, i: usize, tk: usize) -> &[f32] {
        let start = b * self.strides[0] + h * self.strides[1] + i * self.strides[2];
        &self.t.storage::<f32>()[start..start + tk]
    }
}

fn dims(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    bias: Option<&FlexTensor>,
    heads: usize,
) -> AttentionDims {
    AttentionDims::new(&q.shape(), &k.shape(), &v.shape(), bias.map(|b| b.shape()).as_ref(), heads)
}

fn tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(values), Layout::contiguous(shape.into()), DType::F32)
}

/// A vector of `n` values written through `fill` before anything reads them.
fn written(n: usize, fill: impl FnOnce(Out)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    fill(Out(v.spare_capacity_mut().as_mut_ptr() as *mut f32));
    // SAFETY: `fill` wrote every element of [0, n) (each caller's tasks tile it exactly).
    unsafe { v.set_len(n) };
    v
}

/// The context `[b, tq, heads · dv]` and each query row's score max and sum of exponentials
/// `[b, heads, tq, 2]` (what the backward pass recomputes the weights from; two numbers per row
/// cost nothing worth skipping when no backward pass follows). Under `causal` a row's max and
/// sum are over the keys it sees.
pub(super) fn forward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    bias: Option<&FlexTensor>,
    causal: bool,
    heads: usize,
    scale: f64,
) -> (FlexTensor, FlexTensor) {
    let d = dims(q, k, v, bias, heads);
    let (cv, tasks, block) = (heads * d.dv, d.batch * heads, d.tq * d.tk);
    let mut stats = vec![0.0f32; tasks * d.tq * 2];
    if tasks * d.tq == 0 || d.tk == 0 {
        // No keys: a zero context (and rows that the backward pass treats as empty).
        return (
            tensor(vec![0.0; d.batch * d.tq * cv], [d.batch, d.tq, cv]),
            tensor(stats, [d.batch, heads, d.tq, 2]),
        );
    }
    let (qo, ko, vo) = (Operand::new(q), Operand::new(k), Operand::new(v));
    let bias = bias.map(|b| Bias::new(b, &d));
    let context = written(d.batch * d.tq * cv, |out| {
        stats.par_chunks_mut(2 * d.tq).enumerate().for_each_init(
            || vec![0.0f32; block],
            |s, (task, st)| {
                let (b, h) = (task / heads, task % heads);
                for (r0, r1, n) in row_blocks(&d, causal) {
                    let pt = scores(&d, &qo, &ko, bias.as_ref(), scale, b, h, s, (r0, r1, n));
                    if causal {
                        causal_rows(&d, s, (r0, r1, n), |i, row| {
                            super::kernels::biased_softmax_rows(
                                row,
                                row.len(),
                                |_| pt(i),
                                &mut st[2 * i..2 * i + 2],
                            )
                        });
                    } else {
                        super::kernels::biased_softmax_rows(s, d.tk, pt, st);
                    }
                    // SAFETY: `s` holds the block's weights, rows r0..r1 of n at row stride tk;
                    // the output rows r0..r1 of (b, h) are dv values at row stride cv inside a
                    // [b, tq, cv] buffer, this task's own.
                    unsafe {
                        let dst = out.at((b * d.tq + r0) * cv + h * d.dv);
                        let vh = (vo.head(b, h, d.dv), vo.row_stride(), vo.col_stride());
                        product(
                            r1 - r0,
                            d.dv,
                            n,
                            dst,
                            cv,
                            (s.as_ptr().add(r0 * d.tk), d.tk as isize, 1),
                            vh,
                            1.0,
                            false,
                        );
                    }
                }
            },
        );
    });
    (tensor(context, [d.batch, d.tq, cv]), tensor(stats, [d.batch, heads, d.tq, 2]))
}

/// Scores `q_h k_hᵀ · scale` of (b, h) for query rows `r0..r1` and keys `0..n` into `s`
/// (tq × tk, row stride tk); returns the bias row lookup (whole rows).
#[allow(clippy::too_many_arguments)]
fn scores<'a>(
    d: &AttentionDims,
    qo: &Operand,
    ko: &Operand,
    bias: Option<&'a Bias>,
    scale: f64,
    b: usize,
    h: usize,
    s: &mut [f32],
    (r0, r1, n): (usize, usize, usize),
) -> impl Fn(usize) -> Option<&'a [f32]> + use<'a> {
    assert_eq!(s.len(), d.tq * d.tk);
    assert!(r0 <= r1 && r1 <= d.tq && n <= d.tk);
    // SAFETY: the operands' head blocks lie inside their tensors (shapes checked by `dims`), rows
    // r0..r1 of q are inside its head block, `s` holds tq × tk values.
    unsafe {
        let kt = (ko.head(b, h, d.dk), ko.col_stride(), ko.row_stride());
        let qh = qo.head(b, h, d.dk).wrapping_offset(r0 as isize * qo.row_stride());
        product(
            r1 - r0,
            n,
            d.dk,
            s.as_mut_ptr().add(r0 * d.tk),
            d.tk,
            (qh, qo.row_stride(), qo.col_stride()),
            kt,
            scale as f32,
            false,
        );
    }
    let tk = d.tk;
    move |i| bias.map(|bias| bias.row(b, h, i, tk))
}

/// Under the causal flag, turns the scores of rows `r0..r1` (keys `0..n`) into weights:
/// `softmax(i, keys)` on the keys `0..=i` row `i` sees, zero weight on the rest of the block's
/// `n` columns (the next products read them).
fn causal_rows(
    d: &AttentionDims,
    s: &mut [f32],
    (r0, r1, n): (usize, usize, usize),
    mut softmax: impl FnMut(usize, &mut [f32]),
) {
    for i in r0..r1 {
        let row = &mut s[i * d.tk..i * d.tk + n];
        let seen = (i + 1).min(n);
        softmax(i, &mut row[..seen]);
        row[seen..].fill(0.0);
    }
}

/// The gradients of `q`, `k`, `v` (contiguous, their shapes) from what the forward pass kept and
/// the context's gradient `grad` `[b, tq, heads · dv]`.
pub(super) fn backward(saved: &AttentionSaved<Flex>, grad: &FlexTensor) -> [FlexTensor; 3] {
    let [q, k, v] = saved.operands();
    let d = dims(&q, &k, &v, None, saved.heads());
    let (c, cv) = (d.heads * d.dk, d.heads * d.dv);
    let (mut dq, mut dk) = (Vec::new(), Vec::new());
    let dv = written(d.batch * d.tk * cv, |dv| {
        dk = written(d.batch * d.tk * c, |dk| {
            dq = written(d.batch * d.tq * c, |dq| {
                backward_into(&d, [&q, &k, &v], saved, grad, [(dq, c), (dk, c), (dv, cv)])
            });
        });
    });
    [
        tensor(dq, [d.batch, d.tq, c]),
        tensor(dk, [d.batch, d.tk, c]),
        tensor(dv, [d.batch, d.tk, cv]),
    ]
}

/// The gradient of the packed `[b, t, 3c]` projection in `saved.q` (q, k, v side by side),
/// written in one buffer.
pub(super) fn backward_packed(saved: &AttentionSaved<Flex>, grad: &FlexTensor) -> FlexTensor {
    let qkv = &saved.q;
    let [b, t, w] = qkv.shape().dims::<3>();
    let c = w / 3;
    let (q, k, v) = (qkv.narrow(2, 0, c), qkv.narrow(2, c, c), qkv.narrow(2, 2 * c, c));
    let d = dims(&q, &k, &v, None, saved.heads());
    let g = written(b * t * w, |g| {
        backward_into(
            &d,
            [&q, &k, &v],
            saved,
            grad,
            [(g, w), (Out(g.at(c)), w), (Out(g.at(2 * c)), w)],
        )
    });
    tensor(g, [b, t, w])
}

/// Writes the gradients of q, k, v into `dst`: for each, the pointer to its (batch 0, row 0,
/// column 0) element and the row stride of the `[b, t, ·]` buffer (rows consecutive per batch).
fn backward_into(
    d: &AttentionDims,
    [q, k, v]: [&FlexTensor; 3],
    saved: &AttentionSaved<Flex>,
    grad: &FlexTensor,
    dst: [(Out, usize); 3],
) {
    let heads = d.heads;
    let (c, cv, tasks, block) = (heads * d.dk, heads * d.dv, d.batch * heads, d.tq * d.tk);
    let [(dq, rq), (dk, rk), (dv, rv)] = dst;
    if block == 0 {
        // No scores (no queries or no keys): every gradient is zero.
        for (out, rs, rows, width) in [(dq, rq, d.tq, c), (dk, rk, d.tk, c), (dv, rv, d.tk, cv)] {
            for r in 0..d.batch * rows {
                // SAFETY: row r of the destination holds `width` elements from its start.
                unsafe { std::ptr::write_bytes(out.at(r * rs), 0, width) };
            }
        }
        return;
    }
    let (stats, grad) = (saved.stats.to_contiguous(), grad.to_contiguous());
    assert_eq!(
        stats.shape().dims::<4>(),
        [d.batch, heads, d.tq, 2],
        "attention backward: row statistics of the wrong shape"
    );
    assert_eq!(
        grad.shape().dims::<3>(),
        [d.batch, d.tq, cv],
        "attention backward: gradient of the wrong shape"
    );
    let (qo, ko, vo) = (Operand::new(q), Operand::new(k), Operand::new(v));
    let bias = saved.mask.bias.as_ref().map(|b| Bias::new(b, d));
    let (st, g) = (stats.storage::<f32>(), grad.storage::<f32>());
    let (scale, causal) = (saved.scale, saved.mask.causal);

    (0..tasks).into_par_iter().for_each_init(
        || (vec![0.0f32; block], vec![0.0f32; block]),
        |(p, ds), task| {
            let (b, h) = (task / heads, task % heads);
            let st = &st[task * 2 * d.tq..(task + 1) * 2 * d.tq];
            if causal {
                // Blocks add into dK and dV (each sees a prefix of the keys): start from zero.
                for (out, rs, width, w0) in [(dk, rk, d.dk, h * d.dk), (dv, rv, d.dv, h * d.dv)] {
                    for r in 0..d.tk {
                        // SAFETY: row r of batch b holds this head's `width` columns from w0.
                        unsafe {
                            std::ptr::write_bytes(out.at((b * d.tk + r) * rs + w0), 0, width)
                        };
                    }
                }
            }
            for (r0, r1, n) in row_blocks(d, causal) {
                let m = r1 - r0;
                // The weights again, from the scores and the forward pass's row statistics.
                let pt = scores(d, &qo, &ko, bias.as_ref(), scale, b, h, p, (r0, r1, n));
                if causal {
                    causal_rows(d, p, (r0, r1, n), |i, row| {
                        super::kernels::biased_softmax_rows_from(
                            row,
                            row.len(),
                            |_| pt(i),
                            &st[2 * i..2 * i + 2],
                        )
                    });
                } else {
                    super::kernels::biased_softmax_rows_from(p, d.tk, pt, st);
                }
                // Row r0 of the block in the tq × tk buffers `p` and `ds`.
                let at = r0 * d.tk;
                // SAFETY: as in `forward`; the gradient rows r0..r1 of (b, h) are dv values at
                // row stride cv; every destination block is this task's own.
                unsafe {
                    let g = (g.as_ptr().add((b * d.tq + r0) * cv + h * d.dv), cv as isize, 1);
                    // dV_h[0..n] (+)= P_blockᵀ · dO_block
                    let p_t = (p.as_ptr().add(at), 1, d.tk as isize);
                    product(n, d.dv, m, dv.at(b * d.tk * rv + h * d.dv), rv, p_t, g, 1.0, causal);
                    // dP_block = dO_block · V_h[0..n]ᵀ
                    let vt = (vo.head(b, h, d.dv), vo.col_stride(), vo.row_stride());
                    product(m, n, d.dv, ds.as_mut_ptr().add(at), d.tk, g, vt, 1.0, false);
                }
                // dS = scale · P ⊙ (dP − Σ dP ⊙ P): rows of the block's n keys (zero weight past
                // what a row sees, so zero gradient there).
                if causal {
                    for i in r0..r1 {
                        let row = i * d.tk..i * d.tk + n;
                        super::kernels::softmax_rows_grad_in_place(
                            &p[row.clone()],
                            &mut ds[row],
                            n,
                            scale as f32,
                        );
                    }
                } else {
                    super::kernels::softmax_rows_grad_in_place(p, ds, d.tk, scale as f32);
                }
                unsafe {
                    // dQ_block = dS_block · K_h[0..n],  dK_h[0..n] (+)= dS_blockᵀ · Q_block
                    let kh = (ko.head(b, h, d.dk), ko.row_stride(), ko.col_stride());
                    let dsr = (ds.as_ptr().add(at), d.tk as isize, 1);
                    product(
                        m,
                        d.dk,
                        n,
                        dq.at((b * d.tq + r0) * rq + h * d.dk),
                        rq,
                        dsr,
                        kh,
                        1.0,
                        false,
                    );
                    let qh = (
                        qo.head(b, h, d.dk).wrapping_offset(r0 as isize * qo.row_stride()),
                        qo.row_stride(),
                        qo.col_stride(),
                    );
                    let ds_t = (ds.as_ptr().add(at), 1, d.tk as isize);
                    product(n, d.dk, m, dk.at(b * d.tk * rk + h * d.dk), rk, ds_t, qh, 1.0, causal);
                }
            }
        },
    );
}
