//! `rfa eval` for a language model: perplexities, loss and Min-K% membership attacks of Df
//! against held-out text, and greedy generations.

use anyhow::{Result, bail};
use rfa_models::FusedOps;

use crate::Run;
use crate::engine::Outputs;
use crate::engine::{self, outputs};
use crate::engine_model::Samples;
use crate::model_init::{self, Gpt2};
use crate::phase_record::PhaseRecord;
use crate::pretrain::{PretrainRecord, held_out_text};
use crate::report::{self, Generation, Report};
use crate::role::Role;

/// One language model's outputs on Df, Dr (a sample) and Dt.
struct LmEvaluated {
    role: Role,
    forget: Outputs,
    retain: Outputs,
    test: Outputs,
    record: PhaseRecord,
}

impl Run {
    /// Language-model evaluation: perplexities, loss and Min-K% attacks of Df against held-out
    /// text, greedy generations from Df and Dr prompts.
    pub(crate) fn eval_lm<B: FusedOps>(&self, backend: &str, device: &B::Device) -> Result<Report> {
        use rfa_eval::{auc, feature_distance, mean_nll, min_k_prob, perplexity};
        let t = self.text()?;
        let tok = self.tokenizer()?;
        self.check_trained(t, false)?;
        self.check_trained(t, true)?;
        let ev = &self.cfg.eval;
        let test_idx: Vec<usize> = t.reported_test.clone();
        // The attacks compare Df with held-out text like it: the forgotten category's test texts.
        let (held_name, held): (String, Vec<usize>) = match t.split.class {
            Some(c) => (
                format!("held-out texts of the forgotten category `{}`", t.train.class_names()[c]),
                test_idx.iter().copied().filter(|&i| t.test.labels()[i] == c).collect(),
            ),
            None => ("the held-out test set".into(), test_idx.clone()),
        };
        if held.is_empty() {
            bail!(
                "no held-out text to compare the forget set with (the test set has none of its category)"
            );
        }
        let retain_sample: Vec<usize> = if ev.max_retain > 0 && ev.max_retain < t.split.retain.len()
        {
            let mut r = t.split.retain.clone();
            rfa_rng::SplitMix64::new(self.cfg.seed ^ 0xe7a1).shuffle(&mut r);
            r.truncate(ev.max_retain);
            r.sort();
            r
        } else {
            t.split.retain.clone()
        };
        // Prompts: the first line (an ELI5 title) of the first texts of Df and of Dr.
        let prompt_of = |i: usize| {
            let text = &t.train.text.texts[i];
            let first = text.lines().next().unwrap_or("").chars().take(200).collect::<String>();
            format!("{}\n", first.trim())
        };
        let mut generations: Vec<Generation> = Vec::new();
        for (from, set) in [("forget", &t.split.forget), ("retain", &t.split.retain)] {
            for &i in set.iter().take(ev.prompts) {
                let category = t.train.class_names()[t.train.labels()[i]].clone();
                generations.push(Generation {
                    from: from.into(),
                    category,
                    prompt: prompt_of(i),
                    continuations: Vec::new(),
                });
            }
        }
        let eos = model_init::eos_id(tok);
        // A backbone rfa pre-trained on other text: every model on its held-out texts.
        let backbone_text = match self.cfg.model.path.as_deref().and_then(PretrainRecord::read) {
            Some(PretrainRecord { held_out_text: Some(h), .. }) => {
                let text = held_out_text(&h, tok)?;
                Some((format!("{} reviews of {}/test", text.len(), h.path.display()), text))
            }
            _ => None,
        };
        let mut backbone_ppl = Vec::new();
        let mut evaluated = Vec::new();
        for (role, model, record) in self.evaluated_models::<B, Gpt2<B>>(device)? {
            let name = role.name();
            let pb = engine::bar(3, "evaluate");
            pb.set_message(name.clone());
            let forget = outputs(&model, &t.train, &t.split.forget, device)?;
            pb.inc(1);
            let retain = outputs(&model, &t.train, &retain_sample, device)?;
            pb.inc(1);
            let test = outputs(&model, &t.test, &test_idx, device)?;
            pb.finish();
            if let Some((_, text)) = &backbone_text {
                let all: Vec<usize> = (0..text.len()).collect();
                backbone_ppl.push(perplexity(&outputs(&model, text, &all, device)?.token_logprobs));
            }
            for g in &mut generations {
                let ids = tok.encode(&g.prompt, false)?;
                let new = model.generate(&ids, ev.generate_tokens, None, 1.0, eos, self.cfg.seed);
                g.continuations.push((name.clone(), tok.decode(&new)?));
            }
            evaluated.push(LmEvaluated { role, forget, retain, test, record });
        }
        let gold_features =
            evaluated.iter().find(|e| e.role == Role::Retrained).map(|e| e.forget.features.clone());
        let mut lm_models = Vec::new();
        for (i, LmEvaluated { role, forget, retain, test, record }) in evaluated.iter().enumerate()
        {
            let held_lp: Vec<Vec<f32>> =
                held.iter().map(|&i| test.token_logprobs[i].clone()).collect();
            let scores = |sets: &[Vec<f32>], score: &dyn Fn(&[f32]) -> Option<f64>| -> Vec<f64> {
                sets.iter().filter_map(|s| score(s)).collect()
            };
            let neg_loss = |s: &[f32]| mean_nll(s).map(|x| -x);
            let min_k = |s: &[f32]| min_k_prob(s, ev.min_k_percent);
            let ppl = |sets: &[Vec<f32>]| perplexity(sets).unwrap_or(f64::NAN);
            let mean = |v: &[f32]| {
                (!v.is_empty()).then(|| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64)
            };
            let forget_distance = match &gold_features {
                Some(g) if *role != Role::Retrained => {
                    let d = forget.feature_dim;
                    Some(feature_distance(
                        &rfa_eval::Rows::new("forget features", &forget.features, d)?,
                        &rfa_eval::Rows::new("forget features", g, d)?,
                    )?)
                }
                _ => None,
            };
            lm_models.push(report::LmModelReport {
                name: role.name(),
                ppl_forget: ppl(&forget.token_logprobs),
                ppl_retain: ppl(&retain.token_logprobs),
                ppl_test: ppl(&test.token_logprobs),
                ppl_held_out: ppl(&held_lp),
                loss_auc: auc(
                    &scores(&forget.token_logprobs, &neg_loss),
                    &scores(&held_lp, &neg_loss),
                )?,
                min_k_auc: auc(&scores(&forget.token_logprobs, &min_k), &scores(&held_lp, &min_k))?,
                auc_gap: None,
                feature_distance_forget: forget_distance,
                residual_norm_forget: mean(&forget.residual_norms),
                residual_norm_retain: mean(&retain.residual_norms),
                ppl_backbone_corpus: backbone_ppl.get(i).copied().flatten(),
                record: record.clone(),
            });
        }
        let gold = evaluated.iter().position(|e| e.role == Role::Retrained);
        if let Some((la, ka)) = gold.map(|i| (lm_models[i].loss_auc, lm_models[i].min_k_auc)) {
            for m in &mut lm_models {
                m.auc_gap = Some(((m.loss_auc - la).abs() + (m.min_k_auc - ka).abs()) / 2.0);
            }
        }
        let unlearned: Vec<&LmEvaluated> =
            evaluated.iter().filter(|e| matches!(e.role, Role::Unlearned { .. })).collect();
        let rfa =
            unlearned.iter().find(|e| !e.forget.residual_norms.is_empty()).unwrap_or(&unlearned[0]);
        let report = Report {
            language_model: Some(report::LmSection {
                models: lm_models,
                generations,
                held_out: held_name,
                held_out_samples: held.len(),
                retain_samples_evaluated: retain_sample.len(),
                min_k_percent: ev.min_k_percent,
                backbone_corpus: backbone_text.map(|(name, _)| name),
            }),
            residual_norms_forget: rfa.forget.residual_norms.clone(),
            residual_norms_retain: rfa.retain.residual_norms.clone(),
            ..self.report_header(t, backend)
        };
        self.publish(report)
    }
}
