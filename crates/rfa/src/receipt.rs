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
    /// Ids the request named that an earlier request of the chain forgot already: reported
    /// here, not forgotten twice, not in the leaves.
    #[serde(default)]
    pub already_forgotten: usize,
    /// Samples the earlier requests of the chain forgot: out of Dr for this one.
    #[serde(default)]
    pub earlier_forgotten: usize,
}

/// What the result measures on the run's validation probes, no retrained model needed: seeded
/// samples of Df and Dr (`unlearn.probe_samples` at most) and the validation probe held out of
/// the test set. Classifiers only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Accuracy (percent) on the Df, Dr and validation probes.
    pub forget_accuracy: f64,
    pub retain_accuracy: f64,
    pub validation_accuracy: f64,
    /// Loss-threshold membership AUC (percent) of the Df probe against the validation probe: 50
    /// is what a model that never saw Df scores.
    pub membership_auc: f64,
    /// Class-wise: percent of the Df probe still predicted as the forgotten class.
    pub forgotten_class_share: Option<f64>,
    pub forget_samples: usize,
    pub retain_samples: usize,
    pub validation_samples: usize,
    /// Mean residual norm ||r_l|| of the adapters (mean over adapted layers and tokens) on the
    /// Df and Dr probes: RFA moves Df's and keeps Dr's near 0. None without adapters.
    #[serde(default)]
    pub residual_norm_forget: Option<f64>,
    #[serde(default)]
    pub residual_norm_retain: Option<f64>,
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
    /// SHA-256 of the previous entry's `receipt.json`; none for a first request.
    pub previous: Option<String>,
    /// Where the previous entry's `receipt.json` is, relative to this receipt's folder.
    #[serde(default)]
    pub previous_receipt: Option<String>,
    /// The git commit rfa was built from, when it was built from a checkout.
    #[serde(default)]
    pub git_commit: Option<String>,
    /// When the result was written (UTC, seconds).
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// The data files: every file below `data.path` (none for the embedded data set), listed
    /// with their SHA-256 in `receipt.data.json` beside the receipt.
    #[serde(default)]
    pub data_files: Option<DataFiles>,
}

/// The data files a receipt covers: `receipt.data.json` (file → SHA-256) and its own SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFiles {
    /// `data.path` as the configuration gives it.
    pub path: String,
    pub files: usize,
    /// SHA-256 of `receipt.data.json`.
    pub list_sha256: String,
}

/// The data files' list beside a receipt.
pub const DATA_FILES: &str = "receipt.data.json";

/// SHA-256 of every file below `path` (or of `path`, a file), by path relative to it.
pub fn data_digests(path: &Path) -> Result<Digests> {
    if path.is_file() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(Digests::from([(name, sha256_file(path)?)]));
    }
    digests(path, "")
}

/// Writes `receipt.data.json` for the files below `path` into `dir`; what the receipt records.
pub fn write_data_files(dir: &Path, path: &Path) -> Result<DataFiles> {
    let list = data_digests(path)?;
    let bytes = canonical_bytes(&list)?;
    lora_core::tensors::write_atomic(&dir.join(DATA_FILES), &bytes)?;
    Ok(DataFiles {
        path: path.display().to_string(),
        files: list.len(),
        list_sha256: sha256_bytes(&bytes),
    })
}

impl Receipt {
    /// The receipt's bytes: pretty JSON, keys sorted.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        canonical_bytes(self)
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

    /// The folder of the model this result produced (its merged model), relative to the
    /// receipt's folder, with its files' SHA-256 keyed relative to that folder.
    pub fn result_model(&self) -> (String, Digests) {
        let files = self
            .outputs
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("merged/")?.to_string(), v.clone())))
            .collect();
        ("merged".into(), files)
    }
}

/// Pretty JSON with sorted keys and serde_json's shortest float form: the bytes are a function
/// of the content.
pub fn canonical_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    // Through Value: serde_json's map is ordered by key.
    let value = serde_json::to_value(v)?;
    let mut bytes = serde_json::to_vec_pretty(&value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// The git commit rfa was built from (build.rs), if it was built from a checkout.
pub fn git_commit() -> Option<String> {
    option_env!("RFA_GIT_COMMIT").filter(|c| !c.is_empty()).map(str::to_string)
}

/// The current time, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc(secs)
}

/// `secs` after 1970-01-01 as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian calendar).
pub fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to civil date: H. Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// 32 bytes from the operating system's generator.
pub fn new_salt() -> Result<Vec<u8>> {
    let mut salt = vec![0u8; 32];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no random salt: {e}"))?;
    Ok(salt)
}

/// The request part for ids `ids` (training-set indices) under `salt`; `already_forgotten` ids
/// it named were forgotten by earlier requests, which forgot `earlier_forgotten` samples.
pub fn request(
    forget: &str,
    ids: &[usize],
    salt: &[u8],
    already_forgotten: usize,
    earlier_forgotten: usize,
) -> Request {
    let names: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let leaves = merkle::leaves(salt, names.iter().map(String::as_str));
    Request {
        forget: forget.to_string(),
        id_hash: "sha256(0x00 ‖ salt ‖ id), id = the sample's index in the training set".into(),
        ids: leaves.len(),
        merkle_root: merkle::hex(&merkle::root(&leaves)),
        leaves: leaves.iter().map(|l| merkle::hex(l)).collect(),
        already_forgotten,
        earlier_forgotten,
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
    /// Entries of the chain that ends at this receipt, this one included.
    pub chain: usize,
    /// The input model's folder, as the receipt places it, and whether it was there to check.
    pub input_model: PathBuf,
    pub input_model_checked: bool,
    /// The public key (hex) of a valid `receipt.sig`.
    pub signed_by: Option<String>,
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
    /// The signer's public key file: the receipt must carry a valid signature by it.
    pub public_key: Option<PathBuf>,
}

/// Checks the chain that ends at the receipt (every previous receipt where it is said to be,
/// with the SHA-256 it is said to have), the receipt's signature if it has one, its own
/// consistency (its leaves give its root), the result's files and the input model's against
/// their SHA-256, and proves `opts.prove`'s id. The first mismatch is the error, naming the file.
pub fn verify(receipt: &Path, opts: &VerifyOptions) -> Result<Verified> {
    let links = crate::chain::walk(receipt)?;
    let here = receipt.parent().map(Path::to_path_buf).unwrap_or_default();
    let sig_file = here.join(crate::signature::SIGNATURE);
    let signed_by = if sig_file.is_file() {
        let bytes =
            std::fs::read(receipt).with_context(|| format!("reading {}", receipt.display()))?;
        Some(crate::signature::check(&bytes, &sig_file, opts.public_key.as_deref())?)
    } else {
        ensure!(
            opts.public_key.is_none(),
            "{} is not signed (no {} beside it), but --public-key asks for a signature",
            receipt.display(),
            sig_file.display()
        );
        None
    };
    let last = links.last().expect("a chain has an entry");
    let r = match &last.entry {
        crate::chain::Entry::Unlearning(r) => r,
        crate::chain::Entry::Reversal(rev) => {
            ensure!(
                opts.prove.is_none() && opts.adapter.is_none(),
                "{} is a reversal: it has no request of its own and no adapter",
                receipt.display()
            );
            let dir = opts.model.clone().unwrap_or_else(|| here.join(&rev.model));
            let files = check_folder(&dir, "", &rev.model_files)?;
            return Ok(Verified {
                files,
                ids: 0,
                chain: links.len(),
                input_model: dir,
                input_model_checked: true,
                signed_by,
                proof: None,
            });
        }
    };
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
    Ok(Verified {
        files,
        ids: r.request.ids,
        chain: links.len(),
        input_model,
        input_model_checked,
        signed_by,
        proof,
    })
}

/// Files below `dir` against `expected` (keys `prefix…`): every one present and equal, no other.
pub fn check_folder(dir: &Path, prefix: &str, expected: &Digests) -> Result<usize> {
    let found = digests(dir, prefix).with_context(|| format!("checking {}", dir.display()))?;
    check_files(dir, prefix, &found, expected, "the unlearning wrote")
}

/// `found` against `expected` (keys `prefix` + the path below `dir`): every file present and
/// equal, no other; `origin` says whose files they are (`the unlearning wrote`).
fn check_files(
    dir: &Path,
    prefix: &str,
    found: &Digests,
    expected: &Digests,
    origin: &str,
) -> Result<usize> {
    let local = |name: &str| dir.join(name.strip_prefix(prefix).unwrap_or(name));
    for (name, sha) in expected {
        match found.get(name) {
            None => bail!("{} is missing (the receipt lists it)", local(name).display()),
            Some(h) if h != sha => bail!(
                "{} has SHA-256 {h}, the receipt says {sha}: it is not the file {origin}",
                local(name).display()
            ),
            Some(_) => {}
        }
    }
    if let Some(extra) = found.keys().find(|k| !expected.contains_key(*k)) {
        bail!("{} is not in the receipt: a file {origin} had no such file", local(extra).display());
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
    merkle::bytes_of_hex(text.trim())
        .with_context(|| format!("{}: a salt file holds hex digits", path.display()))
}

/// Reads the data set the receipt's own configuration names, split as it was (`data.after`'s
/// chain included), and checks that its training samples and its forgotten samples are the
/// ones the receipt's digests describe. Returns the data set's folder.
pub fn verify_data(receipt: &Path) -> Result<PathBuf> {
    let r = Receipt::read(receipt)?;
    let cfg: crate::config::RunConfig = serde_json::from_value(r.config.clone())
        .with_context(|| format!("{}: the configuration it records", receipt.display()))?;
    let path = cfg.data.path.clone();
    if let Some(d) = &r.data_files {
        // The list is the receipt's (its SHA-256), then every file is the list's.
        let list_file = receipt.with_file_name(DATA_FILES);
        let bytes = std::fs::read(&list_file)
            .with_context(|| format!("reading {}", list_file.display()))?;
        let sha = sha256_bytes(&bytes);
        ensure!(
            sha == d.list_sha256,
            "{} has SHA-256 {sha}, {} says {}",
            list_file.display(),
            receipt.display(),
            d.list_sha256
        );
        let listed: Digests = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a list of files", list_file.display()))?;
        let dir = if path.is_file() {
            path.parent().unwrap_or(Path::new("")).to_path_buf()
        } else {
            path.clone()
        };
        if path.is_file() {
            let name =
                path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            ensure!(
                listed.keys().eq([&name]),
                "{}: the list names other files than {}",
                list_file.display(),
                path.display()
            );
        }
        check_files(&dir, "", &data_digests(&path)?, &listed, "the unlearning read")?;
    }
    let run = crate::Run::open(cfg).context("reading the data the receipt names")?;
    let (train, forget) = run.sample_digests();
    let shown = if path.as_os_str().is_empty() {
        "the embedded data set".into()
    } else {
        path.display().to_string()
    };
    ensure!(
        train == r.train_samples_sha256,
        "the training samples read from {shown} have SHA-256 {train}, {} says {}: they are not the data it was made on",
        receipt.display(),
        r.train_samples_sha256
    );
    ensure!(
        forget == r.forget_samples_sha256,
        "the forgotten samples read from {shown} have SHA-256 {forget}, {} says {}",
        receipt.display(),
        r.forget_samples_sha256
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_times_are_civil_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_601_599), "2026-12-06T23:59:59Z");
        assert_eq!(utc(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
