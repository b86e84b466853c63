#!/usr/bin/env python3
"""The PyTorch + transformers + peft reference step (../shared/bench/torch_rfa_reference.py,
imported unchanged) in the settings the reference's own command line does not offer:

  --tf32      f32 matmuls on TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32 = True):
              what burn-cuda 0.21 does for every f32 matmul, so "f32" rows compare like with like;
  vit-tiny    the demo's ViT (28x28 images, patch 7, 2 layers x 64, 4 heads, LoRA on query/value,
              32 + 32 images), for the CPU comparison at the demo's size.

Usage: python3 bench/torch_variants.py REFERENCE.py [--device cuda|cpu] [--threads N] [--tf32]
           [--models gpt2,bert,vit,vit-tiny] [--dtypes fp32,bf16] [--batch B] [--seq T] [--steps S] [--warmup W]
Prints one JSON line of versions, then one per configuration (the reference's row, plus "tf32")."""
import argparse, importlib.util, json

ap = argparse.ArgumentParser()
ap.add_argument("reference")
ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
ap.add_argument("--threads", type=int)
ap.add_argument("--tf32", action="store_true")
ap.add_argument("--models", default="vit-tiny")
ap.add_argument("--dtypes", default="fp32")
ap.add_argument("--batch", type=int)
ap.add_argument("--seq", type=int)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--warmup", type=int, default=3)
args = ap.parse_args()
spec = importlib.util.spec_from_file_location("ref", args.reference)
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
import torch

ref.DEV = args.device
if args.threads:
    torch.set_num_threads(args.threads)
torch.backends.cuda.matmul.allow_tf32 = args.tf32
torch.backends.cudnn.allow_tf32 = args.tf32
original_build = ref.build


def build(name, batch_override=None, seq_override=None):
    if name != "vit-tiny":
        return original_build(name, batch_override, seq_override)
    import transformers as tf
    cfg = tf.ViTConfig(image_size=28, patch_size=7, num_channels=3, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=256, num_labels=10)
    m = tf.ViTForImageClassification(cfg)
    make = lambda b: {"pixel_values": torch.randn(b, 3, 28, 28)}
    return m, ref.attention_qv(m), False, "vit", batch_override or 32, 17, make, sum(p.numel() for p in m.parameters())


ref.build = build
import transformers, peft
info = dict(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__, tf32=args.tf32)
info.update(device=torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", threads=torch.get_num_threads())
print(json.dumps(info), flush=True)
for name in args.models.split(","):
    for dt in args.dtypes.split(","):
        try:
            row = ref.time_config(name, dt, args.steps, args.warmup, 8, "branch", args.batch, args.seq)
        except Exception as ex:
            row = dict(model=name, dtype=dt, variant="branch", error=repr(ex)[:300])
        row["tf32"] = args.tf32
        print(json.dumps(row), flush=True)
