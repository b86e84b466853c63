//! Deletion requests one after another. Each `receipt.json` names the previous entry's receipt
//! (where it is, and its SHA-256), so the receipts of a run's requests form a chain back to the
//! first one. An entry is a request's unlearning ([`Receipt`]) or the reversal of the latest
//! request still in force ([`Reversal`]): dropping that request's adapter gives back the model
//! it started from, bit for bit, because that model is kept and hashed.
//!
//! `rfa unlearn --after` reads the chain to know where to start ([`Link::model`]) and which
//! samples earlier requests forgot ([`forgotten_ids`]); `rfa ledger` lists it ([`ledger`]).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::merkle;
use crate::receipt::{self, Digests, Metrics, RECEIPT, Receipt};

pub const REVERSAL_FORMAT: &str = "rfa.reversal.v1";
/// A reversal's folder beside the result it reverses: `<result>-reverted/`.
pub const REVERTED_SUFFIX: &str = "-reverted";

/// The reversal of the latest request in force: the model goes back to that request's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reversal {
    pub format: String,
    pub statement: String,
    /// SHA-256 of the reversed request's `receipt.json`.
    pub reverses: String,
    /// The reversed request, as its receipt states it.
    pub reversed_forget: String,
    pub reversed_ids: usize,
    pub reversed_merkle_root: String,
    /// The model after the reversal (the reversed request's input model), relative to this
    /// receipt's folder, and the SHA-256 of its files.
    pub model: String,
    pub model_files: Digests,
    pub previous: Option<String>,
    pub previous_receipt: Option<String>,
    pub created: String,
    pub rfa_version: String,
    pub git_commit: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Unlearning(Box<Receipt>),
    Reversal(Reversal),
}

/// One entry of a chain, as read from its file.
#[derive(Debug, Clone)]
pub struct Link {
    /// The entry's `receipt.json`.
    pub path: PathBuf,
    /// SHA-256 of its bytes: what the next entry's `previous` names.
    pub sha256: String,
    pub entry: Entry,
}

impl Link {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let sha256 = receipt::sha256_bytes(&bytes);
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let entry = match value.get("format").and_then(|f| f.as_str()) {
            Some(REVERSAL_FORMAT) => Entry::Reversal(
                serde_json::from_value(value)
                    .with_context(|| format!("{} is not an rfa reversal", path.display()))?,
            ),
            _ => Entry::Unlearning(Box::new(Receipt::read(path)?)),
        };
        Ok(Self { path: path.to_path_buf(), sha256, entry })
    }

    /// The folder the receipt is in.
    pub fn folder(&self) -> PathBuf {
        self.path.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    fn previous(&self) -> (Option<&String>, Option<&String>) {
        match &self.entry {
            Entry::Unlearning(r) => (r.previous.as_ref(), r.previous_receipt.as_ref()),
            Entry::Reversal(r) => (r.previous.as_ref(), r.previous_receipt.as_ref()),
        }
    }

    /// The model this entry leaves (a request's merged model, a reversal's restored one): its
    /// folder and the SHA-256 of its files by path relative to it.
    pub fn model(&self) -> (PathBuf, Digests) {
        match &self.entry {
            Entry::Unlearning(r) => {
                let (dir, files) = r.result_model();
                (self.folder().join(dir), files)
            }
            Entry::Reversal(r) => (self.folder().join(&r.model), r.model_files.clone()),
        }
    }

    /// The model this entry leaves, checked against its hashes: an error names the first file
    /// that differs, so no request starts from a model its receipt does not describe.
    pub fn verified_model(&self) -> Result<(PathBuf, Digests)> {
        let (dir, files) = self.model();
        ensure!(
            !files.is_empty(),
            "{}: the receipt lists no model files to continue from",
            self.path.display()
        );
        receipt::check_folder(&dir, "", &files).with_context(|| {
            format!(
                "{} does not match {}: refusing to continue from it",
                dir.display(),
                self.path.display()
            )
        })?;
        Ok((dir, files))
    }
}

/// The receipt `path` names: a `receipt.json`; a folder holding one; or a run folder, where the
/// result folder `result` (the method's, `rfa` or `salun-s2`) is taken, or its reversal if
/// there is one.
pub fn resolve(path: &Path, result: &str) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    ensure!(path.is_dir(), "{} does not exist", path.display());
    let candidates = [
        path.join(RECEIPT),
        path.join(format!("{result}{REVERTED_SUFFIX}")).join(RECEIPT),
        path.join(result).join(RECEIPT),
    ];
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "{} holds no receipt: name a receipt.json, the result folder holding one, or a run folder with a `{result}/` result",
            path.display()
        )
    })
}

/// The chain ending at `receipt`, oldest entry first. Every link is checked: the previous
/// receipt is where the entry says and has the SHA-256 it says, and a reversal reverses the
/// latest request still in force.
pub fn walk(receipt: &Path) -> Result<Vec<Link>> {
    let mut links = vec![Link::read(receipt)?];
    let mut seen = HashSet::from([links[0].sha256.clone()]);
    loop {
        let last = links.last().expect("one link");
        let (sha, rel) = last.previous();
        let (sha, rel) = match (sha, rel) {
            (None, None) => break,
            (Some(s), Some(r)) => (s.clone(), r.clone()),
            _ => bail!(
                "{}: previous and previous_receipt come together; the chain is broken",
                last.path.display()
            ),
        };
        let path = last.folder().join(&rel);
        ensure!(
            path.is_file(),
            "{} names its previous receipt {}, which is missing: the chain is broken there",
            last.path.display(),
            path.display()
        );
        let link = Link::read(&path)?;
        ensure!(
            link.sha256 == sha,
            "{} has SHA-256 {}, but {} names {sha} as its previous receipt: the chain is broken (a receipt was changed, replaced or reordered)",
            path.display(),
            link.sha256,
            last.path.display()
        );
        ensure!(seen.insert(link.sha256.clone()), "{}: the chain loops", path.display());
        links.push(link);
    }
    links.reverse();
    in_force(&links)?;
    Ok(links)
}

/// The requests in force after the whole chain (not reversed), oldest first.
pub fn in_force(links: &[Link]) -> Result<Vec<&Link>> {
    let mut stack: Vec<&Link> = Vec::new();
    for link in links {
        match &link.entry {
            Entry::Unlearning(_) => stack.push(link),
            Entry::Reversal(r) => {
                let Some(top) = stack.pop() else {
                    bail!("{} reverses a request, but none is in force", link.path.display())
                };
                ensure!(
                    top.sha256 == r.reverses,
                    "{} reverses {}, but the latest request in force is {} ({}): only the latest can be reversed",
                    link.path.display(),
                    r.reverses,
                    top.path.display(),
                    top.sha256
                );
            }
        }
    }
    Ok(stack)
}

/// The training-set indices the requests in force forgot, read back from their salted leaves
/// (each request's `receipt.salt`, beside its receipt). `train_samples_sha256` is this run's
/// training data: a chain continues on the data it was made on.
pub fn forgotten_ids(
    links: &[Link],
    train_len: usize,
    train_samples_sha256: &str,
) -> Result<BTreeSet<usize>> {
    let mut all = BTreeSet::new();
    for link in in_force(links)? {
        let Entry::Unlearning(r) = &link.entry else { unreachable!("in force") };
        ensure!(
            r.train_samples_sha256 == train_samples_sha256,
            "{} was made on other training data (samples sha256 {}, this run's {train_samples_sha256}): a request continues the chain on the data the earlier ones were made on",
            link.path.display(),
            r.train_samples_sha256
        );
        let salt_file = link.folder().join(receipt::SALT);
        let salt = receipt::read_salt(&salt_file).with_context(|| {
            format!("the salt of {} tells which samples it forgot", link.path.display())
        })?;
        let leaves: HashSet<merkle::Hash> =
            r.request.leaves.iter().filter_map(|l| merkle::unhex(l)).collect();
        let ids: Vec<usize> = (0..train_len)
            .filter(|i| leaves.contains(&merkle::leaf(&salt, &i.to_string())))
            .collect();
        ensure!(
            ids.len() == r.request.ids,
            "{}: {} of its {} ids are samples of this training set (is {} its salt?)",
            link.path.display(),
            ids.len(),
            r.request.ids,
            salt_file.display()
        );
        all.extend(ids);
    }
    Ok(all)
}

/// Writes the reversal of `receipt` (the latest request in force of its chain) into
/// `<result>-reverted/`, after checking that the model it goes back to is there, unchanged.
/// Returns the reversal's receipt.
pub fn revert(receipt: &Path) -> Result<PathBuf> {
    let links = walk(receipt)?;
    let last = links.last().expect("a chain has an entry");
    let Entry::Unlearning(r) = &last.entry else {
        bail!(
            "{} is a reversal; reverse the request before it by naming the reversal's own chain end",
            last.path.display()
        )
    };
    let folder = last.folder();
    let back_to = folder.join(&r.input_model);
    receipt::check_folder(&back_to, "", &r.input_model_files).with_context(|| {
        format!(
            "{} is not the model {} started from: it cannot be given back exactly",
            back_to.display(),
            last.path.display()
        )
    })?;
    let name = folder.file_name().context("the result folder has a name")?.to_string_lossy();
    let out = folder.with_file_name(format!("{name}{REVERTED_SUFFIX}"));
    let run = folder.parent().map(Path::to_path_buf).unwrap_or_default();
    let _lock = crate::RunLock::folder(
        &run,
        &out.file_name().expect("named").to_string_lossy(),
        "rfa revert",
    )?;
    let staged = crate::staged_dir::StagedDir::new(&out)?;
    let reversal = Reversal {
        format: REVERSAL_FORMAT.into(),
        statement: receipt::STATEMENT.into(),
        reverses: last.sha256.clone(),
        reversed_forget: r.request.forget.clone(),
        reversed_ids: r.request.ids,
        reversed_merkle_root: r.request.merkle_root.clone(),
        model: format!("../{name}/{}", r.input_model),
        model_files: r.input_model_files.clone(),
        previous: Some(last.sha256.clone()),
        previous_receipt: Some(format!("../{name}/{RECEIPT}")),
        created: receipt::utc_now(),
        rfa_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: receipt::git_commit(),
    };
    let bytes = receipt::canonical_bytes(&reversal)?;
    lora_core::tensors::write_atomic(&staged.path().join(RECEIPT), &bytes)?;
    staged.commit()?;
    Ok(out.join(RECEIPT))
}

/// One line of `rfa ledger`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerEntry {
    /// 1 for the first entry of the chain.
    pub entry: usize,
    /// `request` or `reversal`.
    pub kind: String,
    pub receipt: PathBuf,
    pub receipt_sha256: String,
    pub created: Option<String>,
    /// The forget specification (a reversal: the reversed request's).
    pub forget: String,
    pub ids: usize,
    pub already_forgotten: usize,
    pub method: Option<String>,
    pub stop: Option<String>,
    pub metrics: Option<Metrics>,
    /// SHA-256 of the model the entry leaves (`model.safetensors`).
    pub model_sha256: Option<String>,
    /// A request: whether it is still in force (not reversed since). A reversal: the entry it
    /// reverses.
    pub in_force: bool,
    pub reverses: Option<usize>,
}

/// The chain as `rfa ledger` lists it.
pub fn ledger(links: &[Link]) -> Result<Vec<LedgerEntry>> {
    let live: HashSet<&str> = in_force(links)?.iter().map(|l| l.sha256.as_str()).collect();
    let position = |sha: &str| links.iter().position(|l| l.sha256 == sha).map(|i| i + 1);
    Ok(links
        .iter()
        .enumerate()
        .map(|(i, link)| {
            let model_sha256 = link.model().1.get("model.safetensors").cloned();
            let common = |kind: &str, forget: &str, ids: usize| LedgerEntry {
                entry: i + 1,
                kind: kind.into(),
                receipt: link.path.clone(),
                receipt_sha256: link.sha256.clone(),
                created: None,
                forget: forget.into(),
                ids,
                already_forgotten: 0,
                method: None,
                stop: None,
                metrics: None,
                model_sha256: model_sha256.clone(),
                in_force: false,
                reverses: None,
            };
            match &link.entry {
                Entry::Unlearning(r) => LedgerEntry {
                    created: r.created.clone(),
                    already_forgotten: r.request.already_forgotten,
                    method: Some(r.method.clone()),
                    stop: r.stop.clone(),
                    metrics: r.metrics.clone(),
                    in_force: live.contains(link.sha256.as_str()),
                    ..common("request", &r.request.forget, r.request.ids)
                },
                Entry::Reversal(r) => LedgerEntry {
                    created: Some(r.created.clone()),
                    reverses: position(&r.reverses),
                    ..common("reversal", &r.reversed_forget, r.reversed_ids)
                },
            }
        })
        .collect())
}

/// The ledger as a Markdown table.
pub fn ledger_markdown(rows: &[LedgerEntry]) -> String {
    let mut s = String::from(
        "| # | entry | created (UTC) | forget | ids | method | Df / Dr / val. acc. | MIA AUC | model SHA-256 | receipt SHA-256 |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let what = match (r.kind.as_str(), r.reverses) {
            ("reversal", Some(n)) => format!("reversal of #{n}"),
            (_, _) if r.in_force => "request".into(),
            _ => "request (reversed)".into(),
        };
        let ids = if r.already_forgotten > 0 {
            format!("{} (+{} forgotten before)", r.ids, r.already_forgotten)
        } else {
            r.ids.to_string()
        };
        let (acc, auc) = match &r.metrics {
            Some(m) => (
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    m.forget_accuracy, m.retain_accuracy, m.validation_accuracy
                ),
                format!("{:.1}", m.membership_auc),
            ),
            None => ("—".into(), "—".into()),
        };
        let short = |h: &Option<String>| h.as_deref().map_or("—".into(), |h| h[..12].to_string());
        s.push_str(&format!(
            "| {} | {what} | {} | `{}` | {ids} | {} | {acc} | {auc} | `{}` | `{}` |\n",
            r.entry,
            r.created.as_deref().unwrap_or("—"),
            r.forget,
            r.method.as_deref().unwrap_or("—"),
            short(&r.model_sha256),
            &r.receipt_sha256[..12],
        ));
    }
    s
}

/// `to` relative to the folder `from` (both absolute, `..` resolved), `/`-separated.
pub fn relative_path(from: &Path, to: &Path) -> String {
    let f: Vec<_> = from.components().collect();
    let t: Vec<_> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); f.len() - common];
    parts.extend(t[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    if parts.is_empty() { ".".into() } else { parts.join("/") }
}

#[cfg(test)]
mod tests {
    use super::relative_path;
    use std::path::Path;

    #[test]
    fn relative_paths_climb_to_the_common_folder() {
        let r = |a: &str, b: &str| relative_path(Path::new(a), Path::new(b));
        assert_eq!(r("/runs/b/rfa", "/runs/a/rfa/merged"), "../../a/rfa/merged");
        assert_eq!(r("/runs/a/rfa", "/runs/a/original"), "../original");
        assert_eq!(r("/runs/a", "/runs/a"), ".");
        assert_eq!(r("/runs/a/rfa", "/runs/a/rfa/receipt.json"), "receipt.json");
    }
}
