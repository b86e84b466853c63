//! Single-pass f32 loops, split over rayon's threads in blocks and written so that the compiler
//! vectorises them (AVX2 + FMA when the CPU has them, chosen at run time): `exp` by range
//! reduction and a degree-6 polynomial (Cephes' `expf`, ≈ 1 ulp), `erf` by Abramowitz & Stegun
//! 7.1.26 (absolute error ≤ 1.5·10⁻⁷). NaN stays NaN.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::{GeluKind, SQRT_2_OVER_PI, TANH_CUBIC};

/// Elements per task: large enough to amortise rayon, small enough to share 2–64 cores.
const BLOCK: usize = 1 << 14;

/// Runs `body` with AVX2 + FMA enabled when the CPU has them (the loops inside are then
/// vectorised 8 wide), else as compiled for the baseline target.
macro_rules! with_simd {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let f = || $body;
                // SAFETY: the CPU supports the features the function is compiled for.
                unsafe { avx2(f) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

#[inline(always)]
fn select(c: bool, a: f32, b: f32) -> f32 {
    if c { a } else { b }
}

/// e^x in f32. Below −87 (where e^x leaves f32's normal range) it is 0; above 88, e^88.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let tiny = x < -87.0;
    // Comparisons written so that NaN falls through unchanged.
    let x = select(tiny, -87.0, x);
    let x = select(x > 88.0, 88.0, x);
    // 1.5·2²³ pushes x·log2(e) into the low mantissa bits: t's bits hold round(x·log2 e).
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let p = p * r * r + r + 1.0;
    let scale = f32::from_bits(((t.to_bits() as i32 - 0x4B40_0000 + 127) << 23) as u32);
    select(tiny, 0.0, p * scale)
}

/// erf(x) and e^(−x²) (the exact GELU's derivative needs both).
#[inline(always)]
fn erf_and_gauss(x: f32) -> (f32, f32) {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let g = exp(-z * z);
    ((1.0 - poly * g).copysign(x), g)
}

#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    let (e, _) = erf_and_gauss(x * std::f32::consts::FRAC_1_SQRT_2);
    0.5 * x * (1.0 + e)
}

#[inline(always)]
fn gelu_erf_grad(x: f32) -> f32 {
    // e^(−(x/√2)²) = e^(−x²/2): φ(x)·√(2π)
    let (e, g) = erf_and_gauss(x * std::f32::consts::FRAC_1_SQRT_2);
    0.5 * (1.0 + e) + x * g * 0.398_942_3
}

/// σ(2u), u = √(2/π)(x + 0.044715·x³) — the tanh GELU is x·σ(2u).
#[inline(always)]
fn gelu_tanh_gate(x: f32) -> f32 {
    let z = -2.0 * (SQRT_2_OVER_PI as f32) * (x + (TANH_CUBIC as f32) * x * x * x);
    // Past e^88 the gate is below f32's normal range: exactly 0, as tanh gives.
    select(z > 88.0, 0.0, 1.0 / (1.0 + exp(z)))
}

#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    x * gelu_tanh_gate(x)
}

#[inline(always)]
fn gelu_tanh_grad(x: f32) -> f32 {
    let s = gelu_tanh_gate(x);
    let du = 2.0 * (SQRT_2_OVER_PI as f32) * (1.0 + 3.0 * (TANH_CUBIC as f32) * x * x);
    s + x * s * (1.0 - s) * du
}

/// A vector of `n` values each written exactly once by `fill`, blocks in parallel.
fn build(n: usize, block: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(block.max(1))
        .enumerate()
        .for_each(|(i, chunk)| fill(i * block, chunk));
    // SAFETY: every element of [0, n) was written by `fill` (the chunks cover it).
    unsafe { out.set_len(n) };
    out
}

pub fn gelu(x: &[f32], kind: GeluKind) -> Vec<f32> {
    build(x.len(), BLOCK, |start, out| {
        let x = &x[start..start + out.len()];
        match kind {
            GeluKind::Erf => with_simd!(out.iter_mut().zip(x).for_each(|(o, &v)| {
                o.write(gelu_erf(v));
            })),
            GeluKind::Tanh => with_simd!(out.iter_mut().zip(x).for_each(|(o, &v)| {
                o.write(gelu_tanh(v));
            })),
        }
    })
}

pub fn gelu_backward(x: &[f32], grad: &[f32], kind: GeluKind) -> Vec<f32> {
    assert_eq!(x.len(), grad.len(), "gelu_backward: input and gradient differ in size");
    build(x.len(), BLOCK, |start, out| {
        let (x, g) = (&x[start..start + out.len()], &grad[start..start + out.len()]);
        match kind {
            GeluKind::Erf => {
                with_simd!(out.iter_mut().zip(x.iter().zip(g)).for_each(|(o, (&v, &g))| {
                    o.write(g * gelu_erf_grad(v));
                }))
            }
            GeluKind::Tanh => {
                with_simd!(out.iter_mut().zip(x.iter().zip(g)).for_each(|(o, (&v, &g))| {
                    o.write(g * gelu_tanh_grad(v));
                }))
            }
        }
    })
}

const LANES: usize = 16;

/// Max and sum over a row in LANES independent accumulators, so that they vectorise.
#[inline(always)]
fn row_reduce(r: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = r.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = f(acc[i], c[i]);
        }
    }
    acc.iter().chain(rest).fold(init, |a, &v| f(a, v))
}

/// The row viewed as initialised values, once every element has been written.
///
/// SAFETY: the caller has written every element of `o`.
#[inline(always)]
unsafe fn assume_init(o: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Blocks of whole rows, about BLOCK elements each.
fn row_block(last: usize) -> usize {
    (BLOCK / last.max(1)).max(1) * last.max(1)
}

/// Softmax of one row in place; returns the row's max and the sum of `exp(x − max)`. A NaN
/// is never the max; it still makes its row NaN through exp and the sum.
#[inline(always)]
fn softmax_row(r: &mut [f32]) -> (f32, f32) {
    let m = row_reduce(r, f32::NEG_INFINITY, |a, v| select(v > a, v, a));
    for v in r.iter_mut() {
        *v = exp(*v - m);
    }
    let sum = row_reduce(r, 0.0, |a, v| a + v);
    scale_row(r, 1.0 / sum);
    (m, sum)
}

#[inline(always)]
fn scale_row(r: &mut [f32], inv: f32) {
    for v in r.iter_mut() {
        *v *= inv;
    }
}

/// `g ← scale · y · (g − Σ g·y)` for one row: the softmax's input gradient from its output.
#[inline(always)]
fn softmax_row_grad(y: &[f32], g: &mut [f32], scale: f32) {
    let mut acc = [0.0f32; LANES];
    for (y, g) in y.chunks(LANES).zip(g.chunks(LANES)) {
        for i in 0..y.len() {
            acc[i] += y[i] * g[i];
        }
    }
    let dot: f32 = acc.iter().sum();
    for (g, &y) in g.iter_mut().zip(y) {
        *g = scale * y * (*g - dot);
    }
}

pub fn softmax_rows(x: &[f32], last: usize) -> Vec<f32> {
    if last == 0 {
        return Vec::new();
    }
    build(x.len(), row_block(last), |start, out| {
        let x = &x[start..start + out.len()];
        with_simd!(for (o, r) in out.chunks_mut(last).zip(x.chunks(last)) {
            for (o, &v) in o.iter_mut().zip(r) {
                o.write(v);
            }
            // SAFETY: the loop above wrote the whole row.
            softmax_row(unsafe { assume_init(o) });
        })
    })
}

pub fn softmax_rows_backward(y: &[f32], grad: &[f32], last: usize) -> Vec<f32> {
    assert_eq!(y.len(), grad.len(), "softmax_backward: output and gradient differ in size");
    if last == 0 {
        return Vec::new();
    }
    build(y.len(), row_block(last), |start, out| {
        let (y, g) = (&y[start..start + out.len()], &grad[start..start + out.len()]);
        with_simd!(
            for ((o, y), g) in out.chunks_mut(last).zip(y.chunks(last)).zip(g.chunks(last)) {
                for (o, &g) in o.iter_mut().zip(g) {
                    o.write(g);
                }
                // SAFETY: the loop above wrote the whole row.
                softmax_row_grad(y, unsafe { assume_init(o) }, 1.0);
            }
        )
    })
}

#[inline(always)]
fn add_row(r: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for (v, &b) in r.iter_mut().zip(b) {
            *v += b;
        }
    }
}

/// The rows `[rows, last]` of attention scores in place: `bias(i)` added to row `i` where
/// there is one, then softmax; each row's max and sum go to `stats` (pairs).
pub(crate) fn biased_softmax_rows<'a>(
    s: &mut [f32],
    last: usize,
    bias: impl Fn(usize) -> Option<&'a [f32]>,
    stats: &mut [f32],
) {
    with_simd!(for (i, r) in s.chunks_mut(last.max(1)).enumerate() {
        add_row(r, bias(i));
        let (m, sum) = softmax_row(r);
        stats[2 * i] = m;
        stats[2 * i + 1] = sum;
    })
}

/// The same softmax from the rows' stored max and sum (pairs in `stats`): the weights of
/// [`biased_softmax_rows`] again, bit for bit, without a max or sum pass.
pub(crate) fn biased_softmax_rows_from<'a>(
    s: &mut [f32],
    last: usize,
    bias: impl Fn(usize) -> Option<&'a [f32]>,
    stats: &[f32],
) {
    with_simd!(for (i, r) in s.chunks_mut(last.max(1)).enumerate() {
        add_row(r, bias(i));
        let m = stats[2 * i];
        for v in r.iter_mut() {
            *v = exp(*v - m);
        }
        scale_row(r, 1.0 / stats[2 * i + 1]);
    })
}

/// The gradient of scores `[rows, last]` in place, from the softmax's output `y` and the
/// gradient `g` of that output, times `scale`.
pub(crate) fn softmax_rows_grad_in_place(y: &[f32], g: &mut [f32], last: usize, scale: f32) {
    with_simd!(for (y, g) in y.chunks(last.max(1)).zip(g.chunks_mut(last.max(1))) {
        softmax_row_grad(y, g, scale);
    })
}
