//! Text data sets: IMDB in its `aclImdb` layout, and ELI5-Category in Hugging Face's JSON or as
//! JSONL (both gzipped or not).
//!
//! Handling of bad text files: an empty review file or one with NUL bytes (binary) is an error
//! naming the file; invalid UTF-8 is decoded with U+FFFD replacement characters and counted in
//! [`TextDataset::lossy`], because real scraped corpora contain a few such bytes and dropping
//! the sample would change the data set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use rfa_rng::SplitMix64;

use crate::{DataError, read_maybe_gz};

/// Texts with integer labels and the corpus's own sample ids.
#[derive(Debug, Clone, PartialEq)]
pub struct TextDataset {
    pub texts: Vec<String>,
    pub labels: Vec<usize>,
    /// IMDB: the file stem (`<id>_<rating>`); ELI5: `q_id`.
    pub ids: Vec<String>,
    pub class_names: Vec<String>,
    pub source: String,
    /// Samples whose bytes were not valid UTF-8 (decoded with replacement characters).
    pub lossy: usize,
}

impl TextDataset {
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

fn decode(path: &Path, bytes: &[u8], lossy: &mut usize) -> Result<String, DataError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            reason: "empty text file".into(),
        });
    }
    if bytes.contains(&0) {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            reason: "binary file (NUL bytes), not text".into(),
        });
    }
    Ok(match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            *lossy += 1;
            String::from_utf8_lossy(bytes).into_owned()
        }
    })
}

/// `dir/<split>/{neg,pos}/*.txt` of the aclImdb layout: label 0 = neg, 1 = pos, in file-name
/// order (neg first).
pub fn load_aclimdb(dir: &Path, split: &str) -> Result<TextDataset, DataError> {
    let mut ds = TextDataset {
        texts: Vec::new(),
        labels: Vec::new(),
        ids: Vec::new(),
        class_names: vec!["neg".into(), "pos".into()],
        source: dir.join(split).display().to_string(),
        lossy: 0,
    };
    for (label, class) in ["neg", "pos"].iter().enumerate() {
        let cdir = dir.join(split).join(class);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&cdir)
            .map_err(|e| DataError::io(&cdir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).map_err(|e| DataError::io(&f, e))?;
            ds.texts.push(decode(&f, &bytes, &mut ds.lossy)?);
            ds.labels.push(label);
            ds.ids
                .push(f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
        }
    }
    if ds.is_empty() {
        return Err(DataError::Format {
            path: dir.join(split),
            reason: "no neg/*.txt or pos/*.txt reviews".into(),
        });
    }
    Ok(ds)
}

/// One ELI5 question.
#[derive(Debug, Clone, PartialEq)]
pub struct Eli5Question {
    pub q_id: String,
    pub category: String,
    pub title: String,
    pub selftext: String,
    pub first_answer: Option<String>,
}

impl Eli5Question {
    /// Title, then the question's text, then the first answer where there is one.
    pub fn text(&self, with_answer: bool) -> String {
        let mut t = self.title.trim().to_string();
        if !self.selftext.trim().is_empty() {
            t.push('\n');
            t.push_str(self.selftext.trim());
        }
        if let (true, Some(a)) = (with_answer, &self.first_answer) {
            t.push('\n');
            t.push_str(a.trim());
        }
        t
    }
}

fn question(v: &Value, path: &Path, at: &str) -> Result<Eli5Question, DataError> {
    let field = |k: &str| -> Result<String, DataError> {
        v.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| DataError::Format {
            path: path.to_path_buf(),
            reason: format!("{at}: field `{k}` is missing or not a string"),
        })
    };
    Ok(Eli5Question {
        q_id: field("q_id")?,
        category: field("category")?,
        title: field("title")?,
        selftext: v.get("selftext").and_then(Value::as_str).unwrap_or("").to_string(),
        first_answer: v.pointer("/answers/text/0").and_then(Value::as_str).map(str::to_string),
    })
}

/// Reads ELI5-Category questions from Hugging Face's JSON (a list of objects) or JSONL (one
/// object per line); `q_id`, `category` and `title` are required, `selftext` and
/// `answers.text` optional.
pub fn read_eli5(path: &Path) -> Result<Vec<Eli5Question>, DataError> {
    let bytes = read_maybe_gz(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        reason: format!("not UTF-8: {e}"),
    })?;
    let bad = |reason: String| DataError::Format { path: path.to_path_buf(), reason };
    if text.trim_start().starts_with('[') {
        let all: Vec<Value> =
            serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        all.iter().enumerate().map(|(i, v)| question(v, path, &format!("record {i}"))).collect()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let v: Value = serde_json::from_str(l)
                    .map_err(|e| bad(format!("line {}: invalid JSON: {e}", i + 1)))?;
                question(&v, path, &format!("line {}", i + 1))
            })
            .collect()
    }
}

/// The experiment set: `categories` (or, when empty, the `n_categories` largest), up to
/// `per_category` questions each chosen with `seed`, labels = category index in the returned
/// `class_names` (sorted). Duplicated `q_id`s across files are kept once.
pub fn eli5_experiment_set(
    files: &[PathBuf],
    categories: &[String],
    n_categories: usize,
    per_category: usize,
    with_answer: bool,
    seed: u64,
) -> Result<TextDataset, DataError> {
    let mut by_cat: BTreeMap<String, Vec<Eli5Question>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for f in files {
        for q in read_eli5(f)? {
            if seen.insert(q.q_id.clone()) {
                by_cat.entry(q.category.clone()).or_default().push(q);
            }
        }
    }
    let chosen: Vec<String> = if categories.is_empty() {
        let mut sizes: Vec<(usize, String)> =
            by_cat.iter().map(|(c, v)| (v.len(), c.clone())).collect();
        sizes.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut c: Vec<String> = sizes.into_iter().take(n_categories).map(|(_, c)| c).collect();
        c.sort();
        c
    } else {
        for c in categories {
            if !by_cat.contains_key(c) {
                return Err(DataError::Forget(format!(
                    "unknown category `{c}` (present: {})",
                    by_cat.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let mut c = categories.to_vec();
        c.sort();
        c
    };
    let mut ds = TextDataset {
        texts: Vec::new(),
        labels: Vec::new(),
        ids: Vec::new(),
        class_names: chosen.clone(),
        source: files.first().map(|p| p.display().to_string()).unwrap_or_default(),
        lossy: 0,
    };
    let mut rng = SplitMix64::new(seed);
    for (label, c) in chosen.iter().enumerate() {
        let mut qs = by_cat[c].clone();
        rng.shuffle(&mut qs);
        qs.truncate(per_category);
        qs.sort_by(|a, b| a.q_id.cmp(&b.q_id));
        for q in qs {
            ds.texts.push(q.text(with_answer));
            ds.labels.push(label);
            ds.ids.push(q.q_id);
        }
    }
    if ds.is_empty() {
        return Err(DataError::Format {
            path: files.first().cloned().unwrap_or_default(),
            reason: "no questions".into(),
        });
    }
    Ok(ds)
}
