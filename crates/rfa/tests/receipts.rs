//! `receipt.json` and `rfa verify`: a receipt verifies against the folders it names; a changed
//! byte in the merged model, the adapter or the input model, and a changed hash in the receipt,
//! is caught and named; an id of the request proves a member with its salt, any other id does
//! not.

use std::path::Path;

mod common;

use common::{rfa_cli as rfa, stderr_of_failure, stdout_or_panic, tiny_args};
use rfa::receipt::{Receipt, VerifyOptions, verify};

/// Flips one byte in the middle of `path`, runs `check`, and puts the byte back.
fn with_flipped_byte(path: &Path, check: impl FnOnce()) {
    let original = std::fs::read(path).unwrap();
    let mut bytes = original.clone();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x40;
    std::fs::write(path, &bytes).unwrap();
    check();
    std::fs::write(path, original).unwrap();
}

#[test]
fn a_receipt_verifies_catches_changes_and_proves_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let args = tiny_args("r", tmp.path(), "ids:3,5,9,17");
    let common: Vec<&str> = args.iter().map(String::as_str).collect();
    for phase in ["train", "unlearn"] {
        stdout_or_panic(rfa(&[&[phase][..], &common].concat()));
    }
    let dir = tmp.path().join("r/rfa");
    let receipt = dir.join("receipt.json");
    let r = Receipt::read(&receipt).unwrap();
    assert_eq!(r.request.ids, 4);
    assert_eq!(r.request.forget, "ids:3,5,9,17");
    assert_eq!(r.method, "rfa");
    assert!(r.statement.starts_with("This receipt is evidence, not proof"));
    assert!(r.outputs.contains_key("adapter/adapter_model.safetensors"), "{:?}", r.outputs);
    assert!(r.outputs.contains_key("merged/model.safetensors"));
    assert!(r.input_model_files.contains_key("model.safetensors"));
    // Canonical: reading and writing again gives the same bytes; no id appears in it.
    let bytes = std::fs::read(&receipt).unwrap();
    assert_eq!(r.to_bytes().unwrap(), bytes);
    assert!(!String::from_utf8_lossy(&bytes).contains("\"17\""));

    let ok = stdout_or_panic(rfa(&["verify", receipt.to_str().unwrap()]));
    assert!(ok.contains("files match") && ok.contains("4 ids"), "{ok}");
    assert!(!ok.contains("not checked"), "{ok}");
    // A receipt handed over with its result only: the input model is said to be unchecked.
    let elsewhere = tmp.path().join("handed-over");
    std::fs::create_dir_all(elsewhere.join("x")).unwrap();
    let copy = elsewhere.join("x/receipt.json");
    std::fs::copy(&receipt, &copy).unwrap();
    let out = stdout_or_panic(rfa(&[
        "verify",
        copy.to_str().unwrap(),
        "--model",
        dir.join("merged").to_str().unwrap(),
        "--adapter",
        dir.join("adapter").to_str().unwrap(),
    ]));
    assert!(out.contains("was not found, so it was not checked"), "{out}");

    // One changed byte, wherever it is, is named.
    for (file, named) in [
        (dir.join("merged/model.safetensors"), "merged/model.safetensors"),
        (dir.join("adapter/adapter_model.safetensors"), "adapter/adapter_model.safetensors"),
        (tmp.path().join("r/original/model.safetensors"), "original/model.safetensors"),
        (dir.join("merged/config.json"), "merged/config.json"),
    ] {
        with_flipped_byte(&file, || {
            let e = stderr_of_failure(rfa(&["verify", receipt.to_str().unwrap()]));
            assert!(e.contains(named) && e.contains("the receipt says"), "{named}: {e}");
        });
    }
    // A receipt whose root no longer matches its leaves, or that does not parse.
    let text = String::from_utf8(bytes.clone()).unwrap();
    let tampered = text.replace(&r.request.merkle_root, &"0".repeat(64));
    std::fs::write(&receipt, tampered).unwrap();
    let e = stderr_of_failure(rfa(&["verify", receipt.to_str().unwrap()]));
    assert!(e.contains("the leaves give the root"), "{e}");
    let leaf = &r.request.leaves[1];
    std::fs::write(&receipt, text.replace(leaf, &leaf.replace('a', "b").replace('1', "2")))
        .unwrap();
    assert!(stderr_of_failure(rfa(&["verify", receipt.to_str().unwrap()])).contains("leaves"));
    std::fs::write(&receipt, &bytes).unwrap();
    // A file the unlearning did not write.
    std::fs::write(dir.join("merged/extra.bin"), b"x").unwrap();
    let e = stderr_of_failure(rfa(&["verify", receipt.to_str().unwrap()]));
    assert!(e.contains("extra.bin") && e.contains("not in the receipt"), "{e}");
    std::fs::remove_file(dir.join("merged/extra.bin")).unwrap();
    // Another folder checked in place of the receipt's own.
    let e = stderr_of_failure(rfa(&[
        "verify",
        receipt.to_str().unwrap(),
        "--model",
        tmp.path().join("r/original").to_str().unwrap(),
    ]));
    assert!(e.contains("the receipt says") || e.contains("not in the receipt"), "{e}");

    // Membership: each requested id proves, others do not, nor does another salt.
    let salt = dir.join("receipt.salt");
    for id in ["3", "5", "9", "17"] {
        let out = stdout_or_panic(rfa(&[
            "verify",
            receipt.to_str().unwrap(),
            "--prove-id",
            id,
            "--salt",
            salt.to_str().unwrap(),
        ]));
        assert!(out.contains(&format!("id {id} is part of the request")), "{out}");
    }
    let opts = |id: &str, salt: &Path| VerifyOptions {
        prove: Some((id.to_string(), salt.to_path_buf())),
        ..Default::default()
    };
    assert_eq!(verify(&receipt, &opts("9", &salt)).unwrap().proof.unwrap().len(), 2);
    for id in ["4", "0", "39", "x"] {
        let e = verify(&receipt, &opts(id, &salt)).unwrap_err().to_string();
        assert!(e.contains("is not part of this request"), "{id}: {e}");
    }
    let other = tmp.path().join("other.salt");
    std::fs::write(&other, "00".repeat(32)).unwrap();
    assert!(verify(&receipt, &opts("3", &other)).is_err());
    // A later unlearning gets a new salt: the same ids, another root.
    stdout_or_panic(rfa(&[&["unlearn"][..], &common].concat()));
    assert_ne!(Receipt::read(&receipt).unwrap().request.merkle_root, r.request.merkle_root);
}
