//! `receipt.json`, written beside every unlearning result: what was asked (the forget request,
//! the forgotten ids as a Merkle root over salted hashes), what it ran on (SHA-256 of the input
//! model's files and digests of the training and forgotten samples), how (method, resolved
//! configuration, seed, rfa's version, backend, dtype, why it stopped) and what it produced
//! (SHA-256 of every file of the adapter and the merged model). [`verify`] checks a receipt
//! against the folders and proves an id's membership.
//!
//! The salt is written to `receipt.salt`, a file of its own: hand over `receipt.json` without it
//! and no id can be read from the leaves. JSON is written with sorted keys and serde_json's
//! shortest float form, so a receipt's bytes are a function of its content.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::fingerprint::sha256_file;
use crate::merkle;

pub const RECEIPT: &str = "receipt.json";
pub const SALT: &str = "receipt.salt";
pub const FORMAT: &str = "rfa.receipt.v1";
pub const STATEMENT: &str = "This receipt is evidence, not proof: approximate unlearning cannot be audited from the weights alone, so it records what was asked, what ran on which inputs, and what it produced.";

/// The forget request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// As the configuration gives it (`class:Coat`, `random:10`, `ids:…`, `id-file:…`).
    pub forget: String,
    /// How an id is hashed; an id is the sample's index in the training set.
    pub id_hash: String,
    pub ids: usize,
    pub merkle_root: String,
    /// The salted leaf hashes, sorted: an id's path to the root is built from them.
    pub leaves: Vec<String>,
}

/// Files by path relative to their folder → SHA-256.
pub type Digests = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub format: String,
    pub statement: String,
    pub request: Request,
    pub method: String,
    pub seed: u64,
    /// The resolved run configuration.
    pub config: serde_json::Value,
    pub rfa_version: String,
    pub backend: Option<String>,
    pub dtype: String,
    /// RFA's stop rule: why it stopped and which step's adapter it kept.
    pub stop: Option<String>,
    /// The input model: its folder relative to the receipt, and its files.
    pub input_model: String,
    pub input_model_files: Digests,
    /// Digests of the training samples and of the forgotten ones (index, label, content).
    pub train_samples_sha256: String,
    pub forget_samples_sha256: String,
    /// The result's files, relative to the receipt's folder (`adapter/…`, `merged/…`).
    pub outputs: Digests,
    /// SHA-256 of the previous request's receipt; none for a first request.
    pub previous: Option<String>,
}

impl Receipt {
    /// The receipt's bytes: pretty JSON, keys sorted.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        // Through Value: serde_json's map is ordered by key.
        let value = serde_json::to_value(self)?;
        let mut bytes = serde_json::to_vec_pretty(&value)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = lora_core::tensors::read_text_limited(path, 256 << 20)
            .with_context(|| format!("reading {}", path.display()))?;
        let r: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an rfa receipt", path.display()))?;
        ensure!(
            r.format == FORMAT,
            "{}: format `{}`, this rfa reads `{FORMAT}`",
            path.display(),
            r.format
        );
        Ok(r)
    }
}

/// 32 bytes from the operating system's generator.
pub fn new_salt() -> Result<Vec<u8>> {
    let mut salt = vec![0u8; 32];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no random salt: {e}"))?;
    Ok(salt)
}

/// The request part for ids `ids` (training-set indices) under `salt`.
pub fn request(forget: &str, ids: &[usize], salt: &[u8]) -> Request {
    let names: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let leaves = merkle::leaves(salt, names.iter().map(String::as_str));
    Request {
        forget: forget.to_string(),
        id_hash: "sha256(0x00 ‖ salt ‖ id), id = the sample's index in the training set".into(),
        ids: leaves.len(),
        merkle_root: merkle::hex(&merkle::root(&leaves)),
        leaves: leaves.iter().map(|l| merkle::hex(l)).collect(),
    }
}

/// SHA-256 of every file below `dir`, keyed `prefix/relative/path`.
pub fn digests(dir: &Path, prefix: &str) -> Result<Digests> {
    let mut out = Digests::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel =
                    p.strip_prefix(dir).expect("below dir").to_string_lossy().replace('\\', "/");
                out.insert(format!("{prefix}{rel}"), sha256_file(&p)?);
            }
        }
    }
    Ok(out)
}

/// What [`verify`] checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub files: usize,
    pub ids: usize,
    /// The input model's folder, as the receipt places it, and whether it was there to check.
    pub input_model: PathBuf,
    pub input_model_checked: bool,
    /// `--prove-id`: the id's path to the root.
    pub proof: Option<Vec<merkle::Step>>,
}

/// Where [`verify`] looks, and what it proves.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The merged model's folder (default: `merged/` beside the receipt).
    pub model: Option<PathBuf>,
    /// The adapter's folder (default: `adapter/` beside the receipt).
    pub adapter: Option<PathBuf>,
    /// An id to prove a member of the request, with the salt file.
    pub prove: Option<(String, PathBuf)>,
}

/// Checks the receipt's own consistency (its leaves give its root), the result's files and the
/// input model's against their SHA-256, and proves `opts.prove`'s id. The first mismatch is the
/// error, naming the file.
pub fn verify(receipt: &Path, opts: &VerifyOptions) -> Result<Verified> {
    let r = Receipt::read(receipt)?;
    let here = receipt.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut leaves = Vec::with_capacity(r.request.leaves.len());
    for (i, l) in r.request.leaves.iter().enumerate() {
        leaves.push(
            merkle::unhex(l)
                .with_context(|| format!("{}: leaf {i} is not a SHA-256", receipt.display()))?,
        );
    }
    ensure!(
        leaves.windows(2).all(|w| w[0] < w[1]) && leaves.len() == r.request.ids,
        "{}: the leaves are not {} sorted distinct hashes",
        receipt.display(),
        r.request.ids
    );
    let root = merkle::hex(&merkle::root(&leaves));
    ensure!(
        root == r.request.merkle_root,
        "{}: the leaves give the root {root}, the receipt says {}",
        receipt.display(),
        r.request.merkle_root
    );
    let mut files = 0;
    for (sub, dir) in [
        ("adapter/", opts.adapter.clone().unwrap_or_else(|| here.join("adapter"))),
        ("merged/", opts.model.clone().unwrap_or_else(|| here.join("merged"))),
    ] {
        let expected: Digests = r
            .outputs
            .iter()
            .filter(|(k, _)| k.starts_with(sub))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if expected.is_empty() {
            continue;
        }
        files += check_folder(&dir, sub, &expected)?;
    }
    let input_model = here.join(&r.input_model);
    let input_model_checked = input_model.is_dir();
    if input_model_checked {
        files += check_folder(&input_model, "", &r.input_model_files)?;
    }
    let proof = match &opts.prove {
        None => None,
        Some((id, salt_file)) => {
            let salt = read_salt(salt_file)?;
            let leaf = merkle::leaf(&salt, id);
            let Some(path) = merkle::proof(&leaves, &leaf) else {
                bail!("id {id} is not part of this request (or the salt is not its salt)");
            };
            ensure!(
                merkle::verify(&merkle::unhex(&root).expect("hex"), &leaf, &path),
                "the path of id {id} does not reach the root"
            );
            Some(path)
        }
    };
    Ok(Verified { files, ids: r.request.ids, input_model, input_model_checked, proof })
}

/// Files below `dir` against `expected` (keys `prefix…`): every one present and equal, no other.
fn check_folder(dir: &Path, prefix: &str, expected: &Digests) -> Result<usize> {
    let found = digests(dir, prefix).with_context(|| format!("checking {}", dir.display()))?;
    for (name, sha) in expected {
        let local = dir.join(name.strip_prefix(prefix).unwrap_or(name));
        match found.get(name) {
            None => bail!("{} is missing (the receipt lists it)", local.display()),
            Some(h) if h != sha => bail!(
                "{} has SHA-256 {h}, the receipt says {sha}: it is not the file the unlearning wrote",
                local.display()
            ),
            Some(_) => {}
        }
    }
    if let Some(extra) = found.keys().find(|k| !expected.contains_key(*k)) {
        bail!(
            "{} is not in the receipt: the folder holds a file the unlearning did not write",
            dir.join(extra.strip_prefix(prefix).unwrap_or(extra)).display()
        );
    }
    Ok(expected.len())
}

pub fn write_salt(path: &Path, salt: &[u8]) -> Result<()> {
    lora_core::tensors::write_atomic(path, format!("{}\n", merkle::hex(salt)).as_bytes())?;
    Ok(())
}

pub fn read_salt(path: &Path) -> Result<Vec<u8>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let t = text.trim();
    ensure!(
        t.len() % 2 == 0 && t.chars().all(|c| c.is_ascii_hexdigit()),
        "{}: a salt file holds hex digits",
        path.display()
    );
    Ok((0..t.len() / 2)
        .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).expect("hex"))
        .collect())
}
