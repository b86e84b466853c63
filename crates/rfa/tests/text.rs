//! Text end to end on small real-format data: IMDB (aclImdb layout) with a BERT classifier,
//! ELI5-Category (JSONL) with a GPT-2 language model; the fixtures' tiny checkpoints and
//! tokenizers stand in for MiniLM and GPT-2.

mod common;

use common::text::{bert_config, eli5, fixture, gpt2_config, imdb};
use rfa::Run;
use rfa::config::RunConfig;
use rfa::engine_model::TokenizedText;

type AB = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
type I = burn::backend::NdArray<f32>;

#[test]
fn imdb_with_a_bert_classifier_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = imdb(tmp.path());
    let run = Run::open(bert_config("imdb", tmp.path(), &data)).unwrap();
    // A random request holds out 30 % of the 12 test reviews as its validation probe.
    assert_eq!(run.sizes(), rfa::SetSizes { train: 12, forget: 3, retain: 9, test: 8, probe: 4 });
    let dev = Default::default();
    run.train::<AB>(false, &dev).unwrap();
    run.train::<AB>(true, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let report = run.eval::<AB>("cpu", &dev).unwrap();
    assert_eq!(report.models.len(), 3);
    assert!(report.language_model.is_none());
    let md = std::fs::read_to_string(run.dir.join("report/report.md")).unwrap();
    assert!(md.contains("| RFA |") && md.contains("MIA-Efficacy"), "{md}");
    // The saved models are complete Hugging Face checkpoints, tokenizer included.
    for d in ["original", "retrain", "rfa/merged"] {
        assert!(run.dir.join(d).join("tokenizer.json").is_file(), "{d}");
    }
    let adapter: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.dir.join("rfa/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let targets = adapter["target_modules"].to_string();
    assert!(targets.contains("query") && targets.contains("value"), "{targets}");
    // Base + adapter = merged.
    let t = run.text().unwrap();
    let mut with_adapter =
        rfa::model_init::Bert::<I>::load(&run.dir.join("original"), &dev).unwrap();
    lora_core::load_adapter(&mut with_adapter, &run.dir.join("rfa/adapter")).unwrap();
    let merged = rfa::model_init::Bert::<I>::load(&run.dir.join("rfa/merged"), &dev).unwrap();
    let idx: Vec<usize> = (0..12).collect();
    let a = rfa::engine::outputs(&with_adapter, &t.test, &idx, &dev).unwrap();
    let b = rfa::engine::outputs(&merged, &t.test, &idx, &dev).unwrap();
    let err = a.logits.iter().zip(&b.logits).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-4, "{err}");
    assert!(a.residual_norms.iter().any(|&r| r > 0.0), "the adapter must have moved");
}

#[test]
fn eli5_with_a_gpt2_language_model_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = eli5(tmp.path());
    let run = Run::open(gpt2_config("eli5", tmp.path(), &data)).unwrap();
    // 20 % of each category held out: 8 + 8 + 8 train, 2 + 2 + 2 test; Biology forgotten.
    assert_eq!(run.sizes(), rfa::SetSizes { train: 24, forget: 8, retain: 16, test: 5, probe: 1 });
    let dev = Default::default();
    run.train::<AB>(false, &dev).unwrap();
    run.train::<AB>(true, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let report = run.eval::<AB>("cpu", &dev).unwrap();
    let lm = report.language_model.as_ref().expect("language-model section");
    assert_eq!(lm.models.len(), 3);
    assert_eq!(lm.held_out_samples, 2, "the forgotten category's held-out texts");
    for m in &lm.models {
        assert!(m.ppl_forget.is_finite() && m.ppl_forget > 1.0, "{m:?}");
        assert!(
            (0.0..=100.0).contains(&m.loss_auc) && (0.0..=100.0).contains(&m.min_k_auc),
            "{m:?}"
        );
    }
    // Training lowers perplexity below the vocabulary size (a uniform guess).
    assert!(lm.models[0].ppl_retain < 300.0, "{:?}", lm.models[0]);
    assert_eq!(lm.generations.len(), 4);
    assert!(lm.generations.iter().all(|g| g.continuations.len() == 3));
    assert_eq!(lm.generations[0].category, "Biology");
    let md = std::fs::read_to_string(run.dir.join("report/report.md")).unwrap();
    assert!(md.contains("Min-K% AUC") && md.contains("## Generations"), "{md}");
    assert!(run.dir.join("report/plots/loss_unlearning.png").is_file());
    assert!(run.dir.join("rfa/merged/tokenizer.json").is_file());
    // The merged language model is the base plus the adapter.
    let t = run.text().unwrap();
    let mut with_adapter =
        rfa::model_init::Gpt2::<I>::load(&run.dir.join("original"), &dev).unwrap();
    lora_core::load_adapter(&mut with_adapter, &run.dir.join("rfa/adapter")).unwrap();
    let merged = rfa::model_init::Gpt2::<I>::load(&run.dir.join("rfa/merged"), &dev).unwrap();
    let idx = [0usize, 1, 2];
    let a = rfa::engine::outputs(&with_adapter, &t.test, &idx, &dev).unwrap();
    let b = rfa::engine::outputs(&merged, &t.test, &idx, &dev).unwrap();
    for (x, y) in a.token_logprobs.iter().zip(&b.token_logprobs) {
        assert_eq!(x.len(), y.len());
        let err = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-4, "{err}");
    }
}

#[test]
fn long_texts_are_cut_keeping_the_closing_token() {
    let bert = rfa_models::TextTokenizer::from_dir(&fixture("hf-parity/bert/tokenizer")).unwrap();
    let text = rfa_data::text::TextDataset {
        texts: vec!["the cat sat on the mat and the dog sat on the log".into(), "a".into()],
        labels: vec![0, 1],
        ids: vec!["0".into(), "1".into()],
        class_names: vec!["neg".into(), "pos".into()],
        source: "test".into(),
        lossy: 0,
    };
    let full = bert.encode(&text.texts[0], true).unwrap();
    let t = TokenizedText::new(text.clone(), &bert, 6, None).unwrap();
    assert_eq!(t.truncated, 1);
    assert_eq!(t.tokens[0].len(), 6);
    assert_eq!(t.tokens[0][..5], full[..5]);
    assert_eq!(t.tokens[0][5], *full.last().unwrap(), "[SEP] stays last");
    // GPT-2: end-of-text after a whole text, none after a cut one.
    let gpt2 = rfa_models::TextTokenizer::from_dir(&fixture("hf-parity/gpt2/tokenizer")).unwrap();
    let t = TokenizedText::new(text, &gpt2, 5, Some(0)).unwrap();
    assert_eq!(t.tokens[0].len(), 5);
    assert_ne!(*t.tokens[0].last().unwrap(), 0);
    assert_eq!(*t.tokens[1].last().unwrap(), 0);
    let (ids, mask) = t.batch::<I>(&[0, 1], &Default::default());
    assert_eq!(ids.dims(), [2, 5]);
    let m: Vec<i64> = mask.into_data().convert::<i64>().into_vec().unwrap();
    assert_eq!(m[5..].iter().sum::<i64>() as usize, t.tokens[1].len());
}

#[test]
fn text_misconfigurations_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = imdb(tmp.path());
    let dev = Default::default();
    let err = |c: RunConfig| format!("{:#}", Run::open(c).err().expect("an error"));

    let mut c = bert_config("vit", tmp.path(), &data);
    c.model.path = None;
    c.model.preset = "vit-tiny".into();
    assert!(err(c).contains("is text"));

    let mut c = bert_config("cat", tmp.path(), &data);
    c.data.forget = "class:Comedy".into();
    assert!(err(c).contains("unknown class `Comedy`"));

    let mut c = bert_config("empty", tmp.path(), &data);
    let empty = data.join("train/pos/99_7.txt");
    std::fs::write(&empty, "  \n").unwrap();
    c.name = "empty".into();
    let e = err(c);
    assert!(e.contains("99_7.txt") && e.contains("empty"), "{e}");
    std::fs::remove_file(&empty).unwrap();

    // More positions than the model has.
    let mut c = bert_config("long", tmp.path(), &data);
    c.data.max_len = 100;
    let e = format!("{:#}", Run::open(c).unwrap().train::<AB>(false, &dev).unwrap_err());
    assert!(e.contains("max_len = 100") && e.contains("64 positions"), "{e}");

    // A tokenizer larger than the model's vocabulary: the real GPT-2 BPE against the 512-token
    // fixture.
    let eli = eli5(tmp.path());
    let mut c = gpt2_config("vocab", tmp.path(), &eli);
    c.model.config = None;
    c.model.path = Some(fixture("hf-parity/gpt2/model"));
    c.model.tokenizer = Some(fixture("gpt2-tokenizer"));
    let e = format!("{:#}", Run::open(c).unwrap().train::<AB>(false, &dev).unwrap_err());
    assert!(e.contains("50257") && e.contains("512"), "{e}");

    // `cls` makes no sense for a language model.
    let mut c = gpt2_config("cls", tmp.path(), &eli);
    c.unlearn.forget_tokens = "cls".into();
    c.train.epochs = 1;
    let run = Run::open(c).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    let e = format!("{:#}", run.unlearn::<AB>(&dev).unwrap_err());
    assert!(e.contains("language model uses `all`"), "{e}");

    let mut c = gpt2_config("nocat", tmp.path(), &eli);
    c.data.categories = vec!["Physics".into(), "Poetry".into()];
    assert!(err(c).contains("unknown category `Poetry`"));
}

#[test]
fn the_lm_loss_on_real_tokens_only_equals_hugging_faces_causal_lm_loss() {
    use rfa::engine_model::{EngineModel, task_loss};
    let dev = Default::default();
    let model = rfa::model_init::Gpt2::<I>::load(&fixture("hf-parity/gpt2/model"), &dev).unwrap();
    let tok = rfa_models::TextTokenizer::from_dir(&fixture("hf-parity/gpt2/tokenizer")).unwrap();
    let text = rfa_data::text::TextDataset {
        texts: vec![
            "the cat sat on the mat".into(),
            "a dog".into(),
            "hello world, hello again and again".into(),
        ],
        labels: vec![0, 0, 1],
        ids: vec!["0".into(), "1".into(), "2".into()],
        class_names: vec!["a".into(), "b".into()],
        source: "test".into(),
        lossy: 0,
    };
    let data = TokenizedText::new(text, &tok, 32, Some(0)).unwrap();
    let batch = model.batch(&data, &[0, 1, 2], &dev).unwrap();
    let pass = model.pass(&batch.input, true);
    let rfa::engine_model::Input::Tokens { ids, mask } = &batch.input else { panic!() };
    for rows in [0..3, 1..3, 0..1] {
        let n = rows.end - rows.start;
        let ours: f32 =
            task_loss(pass.logits.as_ref().unwrap(), &batch, rows.clone()).into_scalar();
        // Reference: full [batch, seq, vocab] logits, labels -100 on padding.
        let full = model
            .forward(
                ids.clone().narrow(0, rows.start, n),
                Some(mask.clone().narrow(0, rows.start, n)),
            )
            .logits;
        let labels = ids
            .clone()
            .narrow(0, rows.start, n)
            .mask_fill(mask.clone().narrow(0, rows.start, n).equal_elem(0), -100);
        let reference: f32 = rfa_models::causal_lm_loss(full, labels).into_scalar();
        assert!(
            (ours - reference).abs() <= 1e-5 * reference.abs(),
            "{rows:?}: {ours} vs {reference}"
        );
    }
}

#[test]
fn baselines_on_a_language_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = eli5(tmp.path());
    let dev = Default::default();
    let mut c = gpt2_config("lm-baselines", tmp.path(), &data);
    c.train.epochs = 1;
    let run = Run::open(c.clone()).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    run.train::<AB>(true, &dev).unwrap();
    for m in ["npo", "grad-diff", "scrub"] {
        let mut c = c.clone();
        c.unlearn.method = m.parse().unwrap();
        Run::open(c).unwrap().unlearn::<AB>(&dev).unwrap_or_else(|e| panic!("{m}: {e:#}"));
    }
    let log: rfa::engine::UnlearnLog = serde_json::from_str(
        &std::fs::read_to_string(run.dir.join("npo/unlearn_log.json")).unwrap(),
    )
    .unwrap();
    let s = &log.steps[0];
    assert!(
        (s.total - s.retain - 20.0 * 2f64.ln()).abs() < 1e-3,
        "NPO starts at (2/β)·ln 2: {s:?}"
    );
    let report = run.eval::<AB>("cpu", &dev).unwrap();
    let names: Vec<String> =
        report.language_model.unwrap().models.into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["original (M0)", "retrain (M*)", "grad-diff", "scrub", "npo"]);
    c.unlearn.method = rfa::Method::RandomLabel;
    let e = format!("{:#}", Run::open(c).unwrap().unlearn::<AB>(&dev).unwrap_err());
    assert!(e.contains("needs a classifier"), "{e}");
}

#[test]
fn own_token_mean_targets_on_a_language_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = eli5(tmp.path());
    let mut c = gpt2_config("tok", tmp.path(), &data);
    c.train.epochs = 1;
    c.unlearn.target = rfa::scenario::Auto::Set(rfa_loss::TargetStrategy::OwnTokenMean);
    let run = Run::open(c.clone()).unwrap();
    let dev = Default::default();
    run.train::<AB>(false, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let log: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.dir.join("rfa/unlearn_log.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(log["settings"]["target"], "own-token-mean");
    let steps = log["steps"].as_array().unwrap();
    let forget = |s: &serde_json::Value| s["forget"].as_f64().unwrap();
    assert!(forget(&steps[0]) > 0.0, "M0's features differ from their ids' means over Dr");
    assert!(forget(&steps[steps.len() - 1]) < forget(&steps[0]), "the forget term falls");

    // Per-token targets need the forget term on every token.
    let mut cls = c;
    cls.name = "tok-cls".into();
    cls.unlearn.forget_tokens = "cls".into();
    let run = Run::open(cls).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    let e = format!("{:#}", run.unlearn::<AB>(&dev).unwrap_err());
    assert!(e.contains("forget_tokens"), "{e}");
}

/// A language model's RFA has the task term by default (γ = 1): its next-token loss on the
/// retain batch. At the first step the model is M0, so the term is M0's loss on that batch — a
/// token-weighted mean of the retained texts' own losses — and it scales with γ.
#[test]
fn a_language_models_task_term_is_m0s_next_token_loss_on_dr() {
    let tmp = tempfile::tempdir().unwrap();
    let data = eli5(tmp.path());
    let dev = Default::default();
    let mut c = gpt2_config("lm-task", tmp.path(), &data);
    c.train.epochs = 1;
    let run = Run::open(c.clone()).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    let lambda = c.unlearn.lambda;
    // Step 0's task term (total less the RFA terms) and the γ the log records.
    let first_extra = |gamma: Option<f64>| -> (f64, f64) {
        let mut c = c.clone();
        c.unlearn.retain_task_weight = gamma;
        let r = Run::open(c).unwrap();
        r.unlearn::<AB>(&dev).unwrap();
        let log: rfa::engine::UnlearnLog = serde_json::from_str(
            &std::fs::read_to_string(r.dir.join("rfa/unlearn_log.json")).unwrap(),
        )
        .unwrap();
        let s = &log.steps[0];
        (s.total - (s.retain + lambda * s.forget), log.settings.unwrap().retain_task_weight)
    };
    let (auto, gamma) = first_extra(None);
    assert_eq!(gamma, 1.0, "the language-model default");
    let (none, _) = first_extra(Some(0.0));
    let (twice, _) = first_extra(Some(2.0));
    assert!(none.abs() < 1e-6, "γ = 0: no task term ({none})");
    assert!((twice - 2.0 * auto).abs() < 1e-4 * auto, "γ = 2 doubles it: {twice} vs {auto}");
    // M0's loss on each retained text; the batch's is a token-weighted mean of some of them.
    let t = run.text().unwrap();
    let m0 = rfa::model_init::Gpt2::<I>::load(&run.dir.join("original"), &dev).unwrap();
    let retain = &t.split.retain;
    let out = rfa::engine::outputs(&m0, &t.train, retain, &dev).unwrap();
    let losses: Vec<f64> = out
        .token_logprobs
        .iter()
        .filter(|lp| !lp.is_empty())
        .map(|lp| -lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len() as f64)
        .collect();
    let (lo, hi) = losses.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert!(lo > 0.0 && (lo - 1e-4..=hi + 1e-4).contains(&auto), "{auto} not in [{lo}, {hi}]");
}
