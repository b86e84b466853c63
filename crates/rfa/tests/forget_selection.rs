//! `unlearn.forget_selection = "unseen-error"`: the forget term trains on the share of Df that
//! unseen data gets wrong, the samples M0 is least sure of.

use rfa::Run;
use rfa::forget_selection::{ForgetSelection, least_confident};
use rfa::scenario::Auto;

mod common;

use common::{AB, unlearn_log};

type I = burn::backend::NdArray<f32>;

#[test]
fn a_random_request_trains_only_on_unseen_datas_error_share_of_df() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let mut cfg = common::tiny("select", tmp.path(), 2);
    cfg.data.forget = "random:20".into();
    // One step over every sample chosen: the first step's forget term is their mean, with
    // B = 0 the same function of M0 whichever samples the batch holds.
    cfg.unlearn.batch_size = 64;
    cfg.unlearn.forget_selection = Auto::Set(ForgetSelection::UnseenError);
    let run = Run::open(cfg.clone()).unwrap();
    run.train::<AB>(false, &dev).unwrap();
    run.unlearn::<AB>(&dev).unwrap();
    let log = unlearn_log(&run, "rfa");
    assert_eq!(log.settings.unwrap().forget_selection, ForgetSelection::UnseenError);
    let selected = log.selected.clone().expect("the log says what was chosen");

    // The choice, recomputed from M0: its accuracy on the validation probe and its confidence
    // in the true label of every forgotten sample.
    let task = run.images().unwrap();
    let m0 = rfa::model_init::Vit::<I>::load(&run.dir.join("original"), &dev).unwrap();
    let probe = rfa::engine::outputs(&m0, &task.test, &task.probe, &dev).unwrap();
    fn rows(o: &rfa::engine::Outputs) -> rfa_eval::Rows<'_> {
        rfa_eval::Rows::new("logits", &o.logits, o.classes).unwrap()
    }
    let unseen = rfa_eval::accuracy(&rows(&probe), &probe.labels).unwrap();
    approx::assert_relative_eq!(selected.unseen_accuracy, unseen);
    let df = &task.split.forget;
    let on_df = rfa::engine::outputs(&m0, &task.train, df, &dev).unwrap();
    let confidence = rfa_eval::true_label_confidence(&rows(&on_df), &on_df.labels);
    let mut expected: Vec<usize> =
        least_confident(&confidence, unseen).into_iter().map(|i| df[i]).collect();
    expected.sort_unstable();
    assert_eq!(selected.rows, expected);
    assert_eq!((selected.samples, selected.of), (expected.len(), df.len()));
    assert!(
        !expected.is_empty() && expected.len() < df.len(),
        "a strict share of Df: {} of {}",
        expected.len(),
        df.len()
    );

    // The same request over all of Df: the first step's forget term is another mean.
    std::fs::rename(run.dir.join("rfa"), run.dir.join("rfa-selected")).unwrap();
    cfg.unlearn.forget_selection = Auto::Set(ForgetSelection::All);
    Run::open(cfg).unwrap().unlearn::<AB>(&dev).unwrap();
    let all = unlearn_log(&run, "rfa");
    assert!(all.selected.is_none());
    assert_eq!(all.steps.len(), log.steps.len(), "the same step budget");
    let (a, b) = (log.steps[0].forget, all.steps[0].forget);
    assert!((a - b).abs() > 1e-6 * b.abs(), "the selection's forget term {a} = Df's {b}");
    // Its report says what the forget term trained on.
    let report = rfa::report::RfaRun::from_log("RFA".into(), log).unwrap().markdown();
    assert!(report.contains(&format!("trained on {} of {}", expected.len(), df.len())), "{report}");
}

#[test]
fn a_language_model_refuses_the_selection_before_anything_is_trained() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::text::eli5(tmp.path());
    let mut cfg = common::text::gpt2_config("lm", tmp.path(), &data);
    cfg.unlearn.forget_selection = Auto::Set(ForgetSelection::UnseenError);
    let run = Run::open(cfg).unwrap();
    let e = run.check_unlearn_targets::<AB>(&Default::default()).unwrap_err().to_string();
    assert!(e.contains("unlearn.forget_selection") && e.contains("language model"), "{e}");
    // The check `rfa unlearn` and `rfa demo` run first, before training.
    assert!(!run.dir.join("original").exists());
}
