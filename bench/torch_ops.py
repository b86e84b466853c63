#!/usr/bin/env python3
"""PyTorch's side of `cargo xtask bench-ops`: the operations of one GPT-2 block at the same shape,
timed alone, forward and forward + backward, one JSON line per operation with the same fields
(op, backend, shape, forward_ms, forward_backward_ms, forward_melem_per_s, forward_gflops).
Matrix products carry bench-ops' exact op names, so the two outputs join on `op`; the other
operations are named "... (torch)".

Usage: python3 bench/torch_ops.py [--device cuda|cpu] [--threads N] [--tf32] [--shape B:T:D:H]
           [--reps R] [--dtype fp32|bf16]
"""
import argparse, json, math, time

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
ap.add_argument("--threads", type=int)
ap.add_argument("--tf32", action="store_true", help="f32 matmuls on TF32 tensor cores, as burn-cuda does")
ap.add_argument("--shape", default="8:512:768:12", help="batch:seq:width:heads")
ap.add_argument("--reps", type=int, default=10)
ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
torch.backends.cuda.matmul.allow_tf32 = args.tf32
torch.backends.cudnn.allow_tf32 = args.tf32
dev = torch.device(args.device)
dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
b, t, d, h = (int(x) for x in args.shape.split(":"))
backend = f"torch-{args.device}-{args.dtype}" + ("-tf32" if args.tf32 else "")


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(reps, f):
    """Median milliseconds of f over reps runs after one untimed run."""
    f()
    sync()
    times = []
    for _ in range(reps):
        s = time.perf_counter()
        f()
        sync()
        times.append((time.perf_counter() - s) * 1000.0)
    times.sort()
    n = len(times)
    return times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])


def op(name, x, f, flops=0.0):
    fwd = timed(args.reps, lambda: f(x.detach()))

    def fwd_bwd():
        y = x.detach().requires_grad_(True)
        f(y).float().sum().backward()

    fb = timed(args.reps, fwd_bwd)
    print(json.dumps({
        "op": name, "backend": backend, "shape": list(x.shape),
        "forward_ms": round(fwd, 3), "forward_backward_ms": round(fb, 3),
        "forward_melem_per_s": round(x.numel() / fwd / 1e3),
        "forward_gflops": round(flops / fwd / 1e6, 1) if flops else 0.0,
    }, ensure_ascii=False), flush=True)


rnd = lambda *s: torch.randn(*s, device=dev, dtype=dtype)
mlp, scores, hidden, w = rnd(b, t, 4 * d), rnd(b, h, t, t), rnd(b, t, d), rnd(d, 4 * d)
ln = torch.nn.LayerNorm(d, device=dev, dtype=dtype)
qkv = rnd(b, t, 3 * d)
causal = torch.triu(torch.full((t, t), -1.0e30 if dtype == torch.float32 else -1.0e4, device=dev, dtype=dtype), 1)
dh = d // h
scale = 1.0 / math.sqrt(dh)


def heads(x):
    return x.view(b, t, h, dh).transpose(1, 2)


def eager_attention(x):
    """transformers' eager attention: scores, bias, softmax, context, heads merged."""
    q, k, v = (heads(y) for y in x.split(d, dim=2))
    p = torch.softmax(q @ k.transpose(-1, -2) * scale + causal, dim=-1)
    return (p @ v).transpose(1, 2).reshape(b, t, d)


def sdpa(x):
    q, k, v = (heads(y) for y in x.split(d, dim=2))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)


op("gelu erf (torch)", mlp, lambda x: F.gelu(x))
op("gelu tanh (torch)", mlp, lambda x: F.gelu(x, approximate="tanh"))
op("softmax (torch)", scores, lambda x: torch.softmax(x, dim=-1))
op("layer_norm (torch)", hidden, lambda x: ln(x))
op("add (torch)", mlp, lambda x: x + x)
flops = 4.0 * b * t * t * d
op("attention, eager (torch)", qkv, eager_attention, flops)
op("attention, sdpa causal (torch)", qkv, sdpa, flops)
flops = 2.0 * b * t * d * 4 * d
op("matmul [b·t, d] × [d, 4d]", hidden, lambda x: x @ w, flops)
tokens, rank = b * t, 8
x2, g2 = hidden.reshape(tokens, d), mlp.reshape(tokens, 4 * d)
a, g_low = rnd(d, rank), rnd(tokens, rank)
op("matmul x·W [b·t, d] × [d, 4d] (2-d)", x2, lambda x: x @ w, flops)
op("matmul dY·Wᵀ [b·t, 4d] × [d, 4d]ᵀ", g2, lambda x: x @ w.t(), flops)
flops = 2.0 * tokens * d * rank
op("matmul x·A [b·t, d] × [d, r]", x2, lambda x: x @ a, flops)
op("matmul xᵀ·G [b·t, d]ᵀ × [b·t, r]", x2, lambda x: x.t() @ g_low, flops)
q4, k4 = rnd(b, h, t, dh), rnd(b, h, dh, t)
op("matmul q·kᵀ per head [b, h, t, d/h] × [b, h, d/h, t]", q4, lambda x: x @ k4, 2.0 * b * h * t * t * dh)
