"""The real clients on rfa's folders: transformers loads every model rfa saved, peft every adapter,
and both compute what rfa computed.

`crates/rfa/tests/hf_clients.rs` writes the runs and rfa's figures under $RFA_HF_CLIENT_DIR
(`<family>/cases.json` + `expected.safetensors`); `.ci/run` runs it, then this suite:

    RFA_HF_CLIENT_DIR=DIR cargo test -p rfa --test hf_clients
    RFA_HF_CLIENT_DIR=DIR python -m pytest crates/rfa/tests/python
"""

import json
import os
import pathlib

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

ROOT = pathlib.Path(os.environ.get("RFA_HF_CLIENT_DIR", "missing-RFA_HF_CLIENT_DIR"))
AUTO = {
    "vit": AutoModelForImageClassification,
    "bert": AutoModelForSequenceClassification,
    "gpt2": AutoModelForCausalLM,
}
TOLERANCE = 1e-4


def manifest(family):
    path = ROOT / family / "cases.json"
    assert path.is_file(), f"{path} is missing: run the Rust side first (module docstring)"
    return json.loads(path.read_text())


def cases():
    """(family, case) for every saved model, read at collection time so each is its own test."""
    out = []
    for family in AUTO:
        path = ROOT / family / "cases.json"
        if path.is_file():
            out += [(family, c) for c in json.loads(path.read_text())["cases"]]
    return out


def case_id(param):
    family, case = param
    return f"{family}-{case['method']}"


def load(family, folder):
    model = AUTO[family].from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def expected(family):
    return load_file(manifest(family)["expected"])


def logits(family, model, exp):
    with torch.no_grad():
        if family == "vit":
            return model(pixel_values=exp["pixel_values"]).logits
        ids = exp["input_ids"].long()
        mask = exp["attention_mask"].long()
        out = model(input_ids=ids, attention_mask=mask).logits
        # rfa's file holds zeros where padding predicts nothing.
        return out * mask[..., None] if family == "gpt2" else out


def assert_close(ours, theirs, what):
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOLERANCE, f"{what}: max |difference| {diff:.3g} > {TOLERANCE}"


def test_every_family_was_written():
    for family in AUTO:
        assert manifest(family)["cases"], family


@pytest.mark.parametrize("family", list(AUTO))
def test_original_loads_and_computes_rfas_logits(family):
    m = manifest(family)
    exp = expected(family)
    model = load(family, m["cases"][0]["original"])
    assert_close(exp["original_logits"], logits(family, model, exp), f"{family} original")


@pytest.mark.parametrize("param", cases(), ids=case_id)
def test_adapter_loads_in_peft_and_merges_to_rfas_merged_model(param):
    family, case = param
    exp = expected(family)
    if case["adapter"]:
        adapted = PeftModel.from_pretrained(load(family, case["original"]), case["adapter"]).eval()
        # Every tensor of the adapter found its module (a wrong name would leave it unused).
        weights = load_file(os.path.join(case["adapter"], "adapter_model.safetensors"))
        lora_modules = {n for n, _ in adapted.named_modules() if n.endswith(".lora_A")}
        assert len(lora_modules) * 2 == len(weights), (sorted(lora_modules), sorted(weights))
        assert_close(exp[case["adapted_logits"]], logits(family, adapted, exp), "peft adapter")
        merged_by_peft = adapted.merge_and_unload()
    if case["merged"]:
        merged = load(family, case["merged"])
        assert_close(exp[case["merged_logits"]], logits(family, merged, exp), "merged model")
        if case["adapter"]:
            ours = merged.state_dict()
            theirs = merged_by_peft.state_dict()
            assert sorted(ours) == sorted(theirs)
            for key, value in theirs.items():
                diff = (ours[key] - value).abs().max().item()
                assert diff <= 1e-5, f"merged/ vs merge_and_unload(): {key} differs by {diff:.3g}"


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_saved_tokenizers_give_rfas_ids(family):
    m = manifest(family)
    folders = {m["cases"][0]["original"]} | {c["merged"] for c in m["cases"] if c["merged"]}
    for folder in sorted(folders):
        tok = AutoTokenizer.from_pretrained(folder)
        for t in m["tokenized"]:
            assert tok(t["text"])["input_ids"] == t["ids"], f"{folder}: {t['text']!r}"


def test_gpt2_generate_gives_rfas_greedy_continuations():
    m = manifest("gpt2")
    assert m["generations"]
    models = {}
    for g in m["generations"]:
        if g["model"] not in models:
            models[g["model"]] = load("gpt2", g["model"])
        model = models[g["model"]]
        prompt = torch.tensor([g["prompt_ids"]])
        with torch.no_grad():
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=g["max_new_tokens"],
                do_sample=False,
                eos_token_id=m["eos"],
                pad_token_id=m["eos"],
            )
        new = out[0, prompt.shape[1] :].tolist()
        assert new == g["continuation_ids"], f"{g['model']}: prompt {g['prompt_ids']}"


def test_image_processor_reproduces_rfas_pixels():
    m = manifest("vit")
    exp = expected("vit")
    proc = AutoImageProcessor.from_pretrained(m["cases"][0]["original"])
    raw = exp["images"].numpy().astype(np.uint8)  # [n, c, h, w]
    pixels = proc(
        [img for img in raw], return_tensors="pt", input_data_format="channels_first"
    )["pixel_values"]
    assert_close(exp["pixel_values"], pixels, "pixel_values")
