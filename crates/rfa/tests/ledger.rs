//! Requests one after another: `rfa unlearn --after` starts from the previous result and keeps
//! every earlier forgotten sample out of Dr, each receipt chains to the previous one, `rfa
//! ledger` lists the chain, `rfa revert` gives back the previous model exactly, and `--sign`
//! makes a changed receipt detectable. A broken chain, a changed model to continue from and
//! other training data are refused, named.

use std::path::Path;

mod common;

use common::{rfa_cli as rfa, stderr_of_failure as failure, stdout_or_panic as ok, tiny_args};
use rfa::chain::{self, Entry, Link};
use rfa::receipt::Receipt;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn requests_chain_list_reverse_and_sign() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path();
    let base = |name: &str, forget: &str| -> Vec<String> {
        let mut args = tiny_args(name, runs, forget);
        // Every step's adapter is kept, so each request changes the model.
        args.extend(["--set".into(), "unlearn.stop=epochs".into()]);
        args
    };
    let run = |cmd: &str, args: &[String], extra: &[&str]| {
        let mut v: Vec<&str> = vec![cmd];
        v.extend(args.iter().map(String::as_str));
        v.extend(extra);
        rfa(&v)
    };
    let key = runs.join("signer");
    ok(rfa(&["keygen", s(&key)]));
    let public = runs.join("signer.pub");

    // Request 1 on M0, signed.
    let a = base("a", "ids:3,5,9,17");
    ok(run("train", &a, &[]));
    ok(run("unlearn", &a, &["--sign", s(&key)]));
    let r1 = runs.join("a/rfa/receipt.json");
    let v = ok(rfa(&["verify", s(&r1), "--public-key", s(&public)]));
    assert!(v.contains("signed by") && v.contains("chain of 1 entry"), "{v}");

    // Request 2 after the run `a` (its rfa/ result): 5 was forgotten already.
    let b = base("b", "ids:5,20,21");
    ok(run("unlearn", &b, &["--after", s(&runs.join("a"))]));
    let r2 = runs.join("b/rfa/receipt.json");
    let rec2 = Receipt::read(&r2).unwrap();
    assert_eq!(rec2.request.ids, 2);
    assert_eq!((rec2.request.already_forgotten, rec2.request.earlier_forgotten), (1, 4));
    assert_eq!(rec2.previous.as_deref(), Some(Link::read(&r1).unwrap().sha256.as_str()));
    assert_eq!(rec2.input_model, "../../a/rfa/merged");
    let rec1 = Receipt::read(&r1).unwrap();
    assert_eq!(rec2.input_model_files, rec1.result_model().1, "started from request 1's model");
    let cfg = std::fs::read_to_string(runs.join("b/rfa/adapter/adapter_config.json")).unwrap();
    assert!(cfg.contains("\"base_model_name_or_path\": \"../../../a/rfa/merged\""), "{cfg}");
    assert!(runs.join("b/original/model.safetensors").is_file(), "the chain's M0, for eval");
    let m2 = rec2.metrics.as_ref().expect("a classifier's receipt has metrics");
    assert!((0.0..=100.0).contains(&m2.retain_accuracy) && m2.forget_samples == 2, "{m2:?}");
    let (rf, rr) = (m2.residual_norm_forget.unwrap(), m2.residual_norm_retain.unwrap());
    assert!(rf > 0.0 && rr > 0.0, "the adapters moved the features: {m2:?}");
    assert!(rec2.created.as_deref().is_some_and(|t| t.ends_with('Z') && t.len() == 20));

    // Request 3 after request 2's receipt; M* of run c is trained without all 7 samples.
    let c = base("c", "ids:30");
    ok(run("unlearn", &c, &["--after", s(&r2)]));
    ok(run("retrain", &c, &["--after", s(&r2)]));
    let fp = std::fs::read_to_string(runs.join("c/retrain/fingerprint.json")).unwrap();
    assert!(fp.contains("\"training samples\": \"33 (sha256"), "{fp}");
    let r3 = runs.join("c/rfa/receipt.json");
    let v = ok(rfa(&["verify", s(&r3)]));
    assert!(v.contains("chain of 3 entries"), "{v}");
    ok(run("eval", &c, &["--after", s(&r2)]));

    // The ledger, as Markdown and JSON.
    let md = ok(rfa(&["ledger", s(&runs.join("c"))]));
    assert_eq!(md.lines().count(), 2 + 3, "{md}");
    assert!(md.contains("`ids:5,20,21`") && md.contains("2 (+1 forgotten before)"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(rfa(&["ledger", s(&r3), "--json"]))).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert_eq!(json[2]["ids"], 1);
    assert_eq!(json[0]["in_force"], true);
    let model = |i: usize| json[i]["model_sha256"].as_str().unwrap().to_string();
    assert!(model(0) != model(1) && model(1) != model(2), "each request changed the model");

    // Reverse request 3: its model goes back to request 2's, bit for bit (hash-checked).
    ok(rfa(&["revert", s(&runs.join("c"))]));
    let rev = runs.join("c/rfa-reverted/receipt.json");
    let v = ok(rfa(&["verify", s(&rev)]));
    assert!(v.contains("chain of 4 entries"), "{v}");
    let links = chain::walk(&rev).unwrap();
    let Entry::Reversal(reversal) = &links[3].entry else { panic!("a reversal") };
    assert_eq!(reversal.model_files, rec2.result_model().1);
    assert_eq!(chain::in_force(&links).unwrap().len(), 2);
    let md = ok(rfa(&["ledger", s(&rev)]));
    assert!(md.contains("reversal of #3") && md.contains("request (reversed)"), "{md}");
    // Reversing the reversal's chain again takes request 2 back.
    let e = failure(rfa(&["revert", s(&rev)]));
    assert!(e.contains("is a reversal"), "{e}");
    // After the reversal, sample 30 is no longer forgotten: a new request may forget it, and it
    // starts from request 2's model.
    let d = base("d", "ids:30");
    ok(run("unlearn", &d, &["--after", s(&runs.join("c"))]));
    let rec4 = Receipt::read(&runs.join("d/rfa/receipt.json")).unwrap();
    assert_eq!(rec4.request.already_forgotten, 0);
    assert_eq!(rec4.request.earlier_forgotten, 6);
    assert_eq!(rec4.input_model_files, rec2.result_model().1);

    // A changed model to continue from is refused, named.
    let merged2 = runs.join("b/rfa/merged/model.safetensors");
    let good = std::fs::read(&merged2).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    std::fs::write(&merged2, &bad).unwrap();
    let e = failure(run("unlearn", &base("e", "ids:31"), &["--after", s(&r2)]));
    assert!(e.contains("model.safetensors") && e.contains("refusing to continue"), "{e}");
    std::fs::write(&merged2, &good).unwrap();
    // Other training data than the chain's.
    let mut other = base("e", "ids:31");
    other[7] = "data.max_train=30".into();
    let e = failure(run("unlearn", &other, &["--after", s(&r2)]));
    assert!(e.contains("other training data"), "{e}");

    // A broken chain: a changed or a missing earlier receipt is named.
    let text = std::fs::read_to_string(&r2).unwrap();
    std::fs::write(&r2, text.replace("\"method\": \"rfa\"", "\"method\": \"rfa \"")).unwrap();
    let e = failure(rfa(&["verify", s(&r3)]));
    assert!(e.contains("the chain is broken") && e.contains("b/rfa/receipt.json"), "{e}");
    std::fs::remove_file(&r2).unwrap();
    let e = failure(rfa(&["ledger", s(&r3)]));
    assert!(e.contains("which is missing"), "{e}");
    std::fs::write(&r2, &text).unwrap();
    ok(rfa(&["verify", s(&r3)]));

    // A signed receipt changed by one character no longer verifies.
    let text1 = std::fs::read_to_string(&r1).unwrap();
    std::fs::write(&r1, text1.replace("\"seed\": 0", "\"seed\": 1")).unwrap();
    let e = failure(rfa(&["verify", s(&r1)]));
    assert!(e.contains("changed after it was signed"), "{e}");
    std::fs::write(&r1, &text1).unwrap();
    let e = failure(rfa(&["verify", s(&r3), "--public-key", s(&public)]));
    assert!(e.contains("is not signed"), "{e}");
}

/// An IDX pair of `n` 28×28 images (pixels from `seed`) and labels 0..9 in turn.
fn write_idx(dir: &Path, split: &str, n: usize, seed: u8) {
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    images.extend((0..n * 784).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    labels.extend((0..n).map(|i| (i % 10) as u8));
    std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), labels).unwrap();
}

#[test]
fn verify_data_catches_a_changed_training_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_idx(&data, "train", 50, 1);
    write_idx(&data, "t10k", 20, 2);
    let args = |cmd: &str| {
        let path = format!("data.path=\"{}\"", data.display());
        let v: Vec<String> = [
            cmd,
            "--name",
            "own",
            "--runs-dir",
            s(tmp.path()),
            "--forget",
            "ids:1,2",
            "--set",
            &path,
            "--set",
            "train.epochs=1",
            "--set",
            "unlearn.epochs=1",
        ]
        .map(String::from)
        .to_vec();
        v
    };
    let strs = |v: &[String]| rfa(&v.iter().map(String::as_str).collect::<Vec<_>>());
    ok(strs(&args("train")));
    ok(strs(&args("unlearn")));
    let receipt = tmp.path().join("own/rfa/receipt.json");
    let out = ok(rfa(&["verify", s(&receipt), "--data"]));
    assert!(out.contains("samples match the receipt's digests"), "{out}");
    // One pixel of one training image changed.
    let images = data.join("train-images-idx3-ubyte");
    let mut bytes = std::fs::read(&images).unwrap();
    bytes[16 + 784 * 30 + 400] ^= 0x10;
    std::fs::write(&images, bytes).unwrap();
    let e = failure(rfa(&["verify", s(&receipt), "--data"]));
    assert!(
        e.contains("train-images-idx3-ubyte has SHA-256") && e.contains("the unlearning read"),
        "the changed file is named: {e}"
    );
    // The list of data files is the receipt's: a changed list is caught too.
    let list = tmp.path().join("own/rfa/receipt.data.json");
    let text = std::fs::read_to_string(&list).unwrap();
    std::fs::write(&list, text.replace("t10k", "t11k")).unwrap();
    let e = failure(rfa(&["verify", s(&receipt), "--data"]));
    assert!(e.contains("receipt.data.json has SHA-256"), "{e}");
    std::fs::write(&list, text).unwrap();
    // The four IDX files are listed.
    let r = std::fs::read_to_string(&receipt).unwrap();
    let v: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(v["data_files"]["files"], 4, "{}", v["data_files"]);
}
