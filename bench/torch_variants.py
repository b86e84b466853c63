#!/usr/bin/env python3
"""The PyTorch + transformers + peft reference step (../shared/bench/torch_rfa_reference.py,
imported unchanged) in the settings the reference's own command line does not offer:

  --tf32      f32 matmuls on TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32 = True):
              what burn-cuda 0.21 does for every f32 matmul, so "f32" rows compare like with like;
  vit-tiny    the demo's ViT (28x28 images, patch 7, 2 layers x 64, 4 heads, LoRA on query/value,
              32 + 32 images), for the CPU comparison at the demo's size;
  MODEL:LAYERSxWIDTH:HEADS   (gpt2, bert or vit) the reference's model at another size, the same
              syntax as `cargo xtask bench --configs` less batch and length (--batch, --seq; a ViT's
              --seq is its image side, patch 16 when the side divides by 16, else 7). At a tiny
              width with the full depth the step does almost no arithmetic and its time is the
              framework's own cost per step: how many operations it dispatches and what each
              costs on the host, which on a GPU bounds the step from below whatever the kernels.

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
ap.add_argument("--count-ops", action="store_true",
                help="count the ATen operations of the second warm-up step (forward, backward, AdamW): "
                     "`aten_ops_per_step`, and `aten_compute_ops_per_step` without views (no kernel)")
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
    if ":" in name:
        return build_sized(name, batch_override, seq_override)
    if name != "vit-tiny":
        return original_build(name, batch_override, seq_override)
    import transformers as tf
    cfg = tf.ViTConfig(image_size=28, patch_size=7, num_channels=3, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=256, num_labels=10)
    m = tf.ViTForImageClassification(cfg)
    make = lambda b: {"pixel_values": torch.randn(b, 3, 28, 28)}
    return m, ref.attention_qv(m), False, "vit", batch_override or 32, 17, make, sum(p.numel() for p in m.parameters())


def build_sized(name, batch_override, seq_override):
    import transformers as tf
    try:
        model, shape, heads = name.split(":")
        layers, width = (int(v) for v in shape.split("x"))
        heads = int(heads)
    except ValueError:
        raise SystemExit(f"--models {name}: expected MODEL:LAYERSxWIDTH:HEADS")
    batch = batch_override or 1
    if model == "gpt2":
        cfg = tf.GPT2Config(n_positions=1024, n_embd=width, n_layer=layers, n_head=heads)
        m, targets, fan, body, seq = tf.GPT2LMHeadModel(cfg), ["c_attn"], True, "transformer", seq_override or 16
        make = lambda b: {"input_ids": torch.randint(0, cfg.vocab_size, (b, seq))}
    elif model == "bert":
        cfg = tf.BertConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=4 * width, num_labels=2)
        m, targets, fan, body, seq = tf.BertForSequenceClassification(cfg), ["query", "value"], False, "bert", seq_override or 16
        make = lambda b: {"input_ids": torch.randint(0, cfg.vocab_size, (b, seq)),
                          "attention_mask": torch.ones(b, seq, dtype=torch.long)}
    elif model == "vit":
        side = seq_override or 32
        patch = 16 if side % 16 == 0 else 7
        cfg = tf.ViTConfig(image_size=side, patch_size=patch, hidden_size=width, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=4 * width, num_labels=10)
        m = tf.ViTForImageClassification(cfg)
        targets, fan, body, seq = ref.attention_qv(m), False, "vit", (side // patch) ** 2 + 1
        make = lambda b: {"pixel_values": torch.randn(b, 3, side, side)}
    else:
        raise SystemExit(f"--models {name}: unknown model {model} (gpt2, bert, vit)")
    return m, targets, fan, body, batch, seq, make, sum(p.numel() for p in m.parameters())


ref.build = build
counted = {}
if args.count_ops:
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, a=(), kw=None):
            counted["all"] = counted.get("all", 0) + 1
            if not func.is_view:
                counted["compute"] = counted.get("compute", 0) + 1
            return func(*a, **(kw or {}))

    original_step, calls = ref.branch_step, [0]

    def branch_step(*a):
        # The second call: the optimizer's state exists (the first step creates it), and it is a
        # warm-up step, so the counting's own cost stays out of the timed steps.
        calls[0] += 1
        if calls[0] != 2:
            return original_step(*a)
        with CountOps():
            return original_step(*a)

    ref.branch_step = branch_step
    if args.warmup < 2:
        raise SystemExit("--count-ops needs --warmup 2 or more (it counts the second step)")
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
        if args.count_ops:
            row.update(aten_ops_per_step=counted.get("all"), aten_compute_ops_per_step=counted.get("compute"))
            counted.clear()
            calls[0] = 0
        print(json.dumps(row), flush=True)
