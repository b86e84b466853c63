"""The `rfa` Python package: the demo through Python, an adapter that peft then loads, bad
input as Python exceptions, and Ctrl-C. Needs the package installed (`pip install
./crates/rfa-py`, or `maturin develop`) and, for the peft test, torch + transformers + peft
(scripts/hf-clients-venv.sh makes such an environment)."""

import json
import os
import signal
import threading
import time

import pytest

import rfa


def small(tmp_path, **overrides):
    """The demo on a slice of its data and two epochs: seconds, not minutes."""
    settings = dict(runs_dir=str(tmp_path), max_train=300, max_test=150, train__epochs=2)
    settings.update(overrides)
    return rfa.RunConfig.demo(**settings)


def test_the_demo_through_python(tmp_path):
    config = small(tmp_path, forget="class:Coat")
    assert config.to_dict()["data"]["forget"] == "class:Coat"
    trained = rfa.train(config)
    assert trained["dir"].endswith(os.path.join("demo", "original"))
    assert trained["phase"]["files"]["model.safetensors"]
    assert [e["epoch"] for e in trained["train_state"]] == [1, 2], trained["train_state"]
    rfa.retrain(config)
    result = rfa.unlearn(config)
    assert os.path.isdir(os.path.join(result["dir"], "adapter"))
    assert result["log"]["steps"], result["log"]
    report = rfa.evaluate(config)
    names = [m["name"] for m in report["models"]]
    assert names == ["original (M0)", "retrain (M*)", "RFA"], names
    for m in report["models"]:
        assert 0 <= m["ta"] <= 100 and 0 <= m["ua"] <= 100, m
    assert report["models"][1]["average_gap"] == 0.0
    assert os.path.isfile(os.path.join(config.run_dir, "report", "report.json"))
    # A baseline by name, beside RFA's result.
    assert rfa.unlearn(config, method="grad-diff")["dir"].endswith("grad-diff")
    assert "grad-diff" in rfa.METHODS


def test_an_unlearning_loads_in_peft(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    config = small(tmp_path, name="peft", train__epochs=1)
    rfa.train(config)
    result = rfa.unlearn(config)
    original = os.path.join(config.run_dir, "original")
    base = transformers.AutoModelForImageClassification.from_pretrained(original)
    adapted = peft.PeftModel.from_pretrained(base, os.path.join(result["dir"], "adapter")).eval()
    merged = transformers.AutoModelForImageClassification.from_pretrained(
        os.path.join(result["dir"], "merged")
    ).eval()
    pixels = torch.randn(4, base.config.num_channels, base.config.image_size, base.config.image_size)
    with torch.no_grad():
        diff = (adapted(pixel_values=pixels).logits - merged(pixel_values=pixels).logits).abs().max()
    assert diff.item() < 1e-4


def test_keywords_name_fields_and_ambiguity_is_an_error(tmp_path):
    config = small(tmp_path, unlearn__lr=5e-4, seed=3)
    d = config.to_dict()
    assert d["unlearn"]["lr"] == 5e-4 and d["seed"] == 3 and d["train"]["lr"] != 5e-4
    with pytest.raises(ValueError, match="`path` is ambiguous: data.path, model.path"):
        small(tmp_path, path="x")
    with pytest.raises(ValueError, match="`lr` is ambiguous: train.lr, unlearn.lr"):
        small(tmp_path, lr=1e-3)
    with pytest.raises(ValueError, match="unknown setting `learning_rate`"):
        small(tmp_path, learning_rate=1e-3)
    with pytest.raises(TypeError, match="unlearn.lr"):
        small(tmp_path, unlearn__lr={"a": 1})
    copy = config.replace(name="other")
    assert copy.name == "other" and config.name == "demo"
    config.set("unlearn.rank", 4)
    assert config.to_dict()["unlearn"]["rank"] == 4
    toml_path = tmp_path / "run.toml"
    toml_path.write_text(config.to_toml())
    assert rfa.RunConfig.from_toml(toml_path).to_dict() == config.to_dict()


def test_bad_input_raises_python_exceptions_with_rfas_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run configuration at"):
        rfa.RunConfig.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 3\n")
    with pytest.raises(ValueError, match="bad.toml"):
        rfa.RunConfig.from_toml(bad)
    with pytest.raises(ValueError, match="^unlearn.lr"):
        rfa.train(small(tmp_path, unlearn__lr=float("nan")))
    with pytest.raises(ValueError, match="unknown unlearning method `forget-all`"):
        rfa.unlearn(small(tmp_path), method="forget-all")
    with pytest.raises(ValueError, match="the Python package runs on cpu and cpu-flex"):
        rfa.train(small(tmp_path), device="cuda")
    missing = tmp_path / "no-such-data"
    with pytest.raises(FileNotFoundError, match="no-such-data"):
        rfa.train(small(tmp_path, dataset="cifar10", data__path=str(missing)))
    with pytest.raises(FileNotFoundError, match="holds no complete M0 .run `rfa train` first"):
        rfa.unlearn(small(tmp_path, name="untrained"))
    # A phase that fails on its own: training diverges.
    with pytest.raises(RuntimeError, match="the loss became"):
        rfa.train(small(tmp_path, name="diverges", train__lr=1e12))


def test_ctrl_c_stops_a_phase_and_keeps_what_it_wrote(tmp_path):
    config = small(tmp_path, name="stopped", train__epochs=100)
    original = os.path.join(config.run_dir, "original")
    sent = []

    def ctrl_c_after_the_first_epoch():
        while not os.path.isfile(os.path.join(original, "train_state.json")):
            time.sleep(0.05)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=ctrl_c_after_the_first_epoch)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        rfa.train(config)
    stopped = time.monotonic()
    watcher.join()
    # Stopped before its next step, not at the end of the epoch or of the run.
    assert stopped - sent[0] < 5.0, stopped - sent[0]
    # The epochs that finished are a whole checkpoint; the run goes on from it.
    done = json.load(open(os.path.join(original, "train_state.json")))
    assert 1 <= len(done) < 100, done
    resumed = rfa.train(config.replace(train__epochs=len(done) + 1))
    assert [e["epoch"] for e in resumed["train_state"]] == list(range(1, len(done) + 2))


def test_requests_one_after_another_with_receipts(tmp_path):
    key = str(tmp_path / "signer")
    public = rfa.keygen(key)
    assert len(public) == 64
    first = small(tmp_path, forget="ids:1,2,3", name="request1", unlearn__epochs=1)
    rfa.train(first)
    done = rfa.unlearn(first, sign=key)
    receipt = os.path.join(done["dir"], "receipt.json")
    assert done["receipt"]["request"]["ids"] == 3
    checked = rfa.verify(receipt, public_key=key + ".pub", prove_id="2",
                         salt=os.path.join(done["dir"], "receipt.salt"))
    assert checked["signed_by"] == public and checked["chain"] == 1 and checked["proof"]
    with pytest.raises(ValueError, match="not part of this request"):
        rfa.verify(receipt, prove_id="7", salt=os.path.join(done["dir"], "receipt.salt"))
    # The next request continues from the first one's result.
    second = first.replace(name="request2", forget="ids:3,7", after=str(first.run_dir))
    nxt = rfa.unlearn(second)
    assert nxt["receipt"]["request"]["already_forgotten"] == 1
    rows = rfa.ledger(second.run_dir)
    assert [r["ids"] for r in rows] == [3, 1] and all(r["in_force"] for r in rows)
    reversal = rfa.revert(second.run_dir)
    assert rfa.verify(reversal)["chain"] == 3
    assert [r["kind"] for r in rfa.ledger(reversal)] == ["request", "request", "reversal"]
    # A changed receipt breaks the signature.
    with open(receipt) as f:
        text = f.read()
    with open(receipt, "w") as f:
        f.write(text.replace('"seed": 0', '"seed": 5'))
    with pytest.raises(ValueError, match="changed after it was signed"):
        rfa.verify(receipt)
