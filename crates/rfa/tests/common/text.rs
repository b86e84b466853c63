//! Small text data sets in the layouts users have (aclImdb folders, ELI5-Category JSONL) and
//! run configurations on them; the fixtures' tiny checkpoints and tokenizers stand in for
//! MiniLM and GPT-2.

use std::path::{Path, PathBuf};

use rfa::config::RunConfig;

pub fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(p)
}

const POS: [&str; 6] = [
    "A wonderful film, the acting was great and the story moving.",
    "I loved every minute of it. Brilliant and funny.",
    "Great cast, great music, a delight from start to end.",
    "One of the best movies I have seen this year, truly excellent.",
    "Beautiful, warm and clever; I would watch it again.",
    "The director did a great job, a superb and touching film.",
];
const NEG: [&str; 6] = [
    "A terrible film, boring and far too long.",
    "I hated it. The plot made no sense and the acting was bad.",
    "Awful dialogue, dull characters, a waste of time.",
    "One of the worst movies I have seen, truly dreadful.",
    "Bad, slow and stupid; I walked out after an hour.",
    "The director failed completely, a poor and lifeless film.",
];

/// An aclImdb folder: train and test, 6 reviews per class each (test reuses them reversed).
pub fn imdb(dir: &Path) -> PathBuf {
    let root = dir.join("aclImdb");
    for (split, rev) in [("train", false), ("test", true)] {
        for (class, texts) in [("neg", NEG), ("pos", POS)] {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for (i, t) in texts.iter().enumerate() {
                let text = if rev { t.chars().rev().collect() } else { t.to_string() };
                std::fs::write(
                    d.join(format!("{i}_{}.txt", if class == "pos" { 8 } else { 2 })),
                    text,
                )
                .unwrap();
            }
        }
    }
    root
}

pub fn bert_config(name: &str, runs: &Path, data: &Path) -> RunConfig {
    let mut c = RunConfig::demo();
    c.name = name.into();
    c.runs_dir = runs.to_path_buf();
    c.data.dataset = "imdb".into();
    c.data.path = data.to_path_buf();
    c.data.forget = "random:25".into();
    c.data.max_len = 32;
    c.model.path = Some(fixture("hf-parity/bert/model"));
    c.model.tokenizer = Some(fixture("hf-parity/bert/tokenizer"));
    c.train.epochs = 1;
    c.train.batch_size = 4;
    c.unlearn.targets = "query,value".into();
    c.unlearn.batch_size = 2;
    c.unlearn.epochs = 1;
    // One probe text cannot tell anything: the adapter must move for the checks below.
    c.unlearn.stop = rfa::scenario::Auto::Set(rfa::scenario::StopRule::Epochs);
    c
}

/// ELI5-Category as JSONL: three categories, ten questions each.
pub fn eli5(dir: &Path) -> PathBuf {
    let topics = [
        (
            "Physics",
            "Why does light bend in water",
            "Light slows down in water, so its path bends at the surface.",
        ),
        (
            "Biology",
            "Why do cells divide",
            "Cells divide so that organisms can grow and repair tissue.",
        ),
        (
            "Economics",
            "Why do prices rise",
            "Prices rise when more money chases the same amount of goods.",
        ),
    ];
    let mut lines = String::new();
    for (c, (cat, title, answer)) in topics.iter().enumerate() {
        for i in 0..10 {
            let v = serde_json::json!({
                "q_id": format!("q{c}{i}"),
                "category": cat,
                "title": format!("{title} number {i}?"),
                "selftext": if i % 2 == 0 { "I never understood this." } else { "" },
                "answers": {"text": [format!("{answer} Example {i}.")]},
            });
            lines += &format!("{v}\n");
        }
    }
    let p = dir.join("eli5.jsonl");
    std::fs::write(&p, lines).unwrap();
    p
}

pub fn gpt2_config(name: &str, runs: &Path, data: &Path) -> RunConfig {
    let mut c = RunConfig::demo();
    c.name = name.into();
    c.runs_dir = runs.to_path_buf();
    c.data.dataset = "eli5".into();
    c.data.path = data.to_path_buf();
    c.data.forget = "class:Biology".into();
    c.data.max_len = 48;
    c.data.test_percent = 20.0;
    let cfg = runs.join("gpt2-config.json");
    std::fs::write(
        &cfg,
        r#"{"model_type": "gpt2", "vocab_size": 300, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 2, "eos_token_id": 0}"#,
    )
    .unwrap();
    c.model.config = Some(cfg);
    c.model.tokenizer = Some(fixture("hf-parity/gpt2/tokenizer"));
    c.train.epochs = 2;
    c.train.batch_size = 8;
    c.train.lr = 3e-3;
    c.unlearn.targets = "c_attn".into();
    c.unlearn.forget_tokens = "all".into();
    c.unlearn.batch_size = 4;
    c.unlearn.epochs = 1;
    c.eval.generate_tokens = 8;
    c
}
