//! The phases that write models: training M0 on D and M* on Dr, and unlearning. Each leaves a
//! [`PhaseRecord`] (`phase.json`) beside its model and switches its folder in whole.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use lora_core::{LoraConfig, TargetModules};
use rfa_models::{Architecture, FusedAutodiff};

use crate::checkpoint::Checkpoints;
use crate::engine::unlearn_rfa;
use crate::engine_model::{EngineModel, Samples};
use crate::fingerprint::Fingerprint;
use crate::measure::{Phase, measure};
use crate::method::Method;
use crate::model_init::{self, Bert, Gpt2, Vit};
use crate::phase_record::{PhaseRecord, read_phase, verify_phase, write_json, write_phase};
use crate::probe::{self, Criterion, Probes};
use crate::role::Role;
use crate::run_lock::RunLock;
use crate::staged_dir::StagedDir;
use crate::task::Task;
use crate::train::train_model;
use crate::{Inner, Run, baselines, chain, receipt, signature};

/// What M0 (all of D) or M* (Dr) trains on.
fn training_indices<D: Samples>(task: &Task<D>, retrain: bool) -> Vec<usize> {
    if retrain { task.split.retain.clone() } else { (0..task.train.len()).collect() }
}

impl Run {
    /// What determines M0 (`retrain` false) or M* under this run's configuration and data.
    fn training_fingerprint<D: Samples>(
        &self,
        task: &Task<D>,
        retrain: bool,
    ) -> Result<Fingerprint> {
        let indices = training_indices(task, retrain);
        Fingerprint::of_training(
            &self.cfg,
            retrain,
            &task.train,
            &indices,
            self.start_checkpoint_sha256()?,
        )
    }

    /// Refuses to build on M0 (`retrain` false) or M* where the run folder holds one made under
    /// another configuration or other data than this run's (its `fingerprint.json`).
    pub(crate) fn check_trained<D: Samples>(&self, task: &Task<D>, retrain: bool) -> Result<()> {
        let (role, command) =
            if retrain { (Role::Retrained, "retrain") } else { (Role::Original, "train") };
        self.training_fingerprint(task, retrain)?.check(
            &role.dir(&self.dir),
            &format!(
                "run `rfa {command} --force` with this configuration first, or use another --name"
            ),
        )
    }

    /// What unlearning needs of the model, checked on a fresh model of the run's architecture
    /// before anything is trained: `unlearn.targets` selects layers, and a non-empty
    /// `unlearn.layer_weights` has one weight per selected layer. `rfa demo` runs it first, so
    /// that such a mistake costs seconds, not the training of M0 and M*.
    pub fn check_unlearn_targets<B: FusedAutodiff>(&self, device: &B::Device) -> Result<()> {
        let (m, seed) = (&self.cfg.model, self.cfg.seed);
        if self.cfg.unlearn.method == Method::Rfa {
            // The scenario, and the validation probe's size.
            let (scenario, probe) = match self.arch {
                Architecture::Vit => {
                    let t = self.images()?;
                    (t.scenario(false), Some(t.probe.len()))
                }
                Architecture::Bert => {
                    let t = self.text()?;
                    (t.scenario(false), Some(t.probe.len()))
                }
                Architecture::Gpt2 => (crate::scenario::Scenario::LanguageModel, None),
            };
            let settings = self.cfg.unlearn.rfa_settings(scenario);
            settings.check()?;
            crate::forget_selection::check_selection(settings.forget_selection, probe)?;
        }
        match self.arch {
            Architecture::Vit => {
                let t = self.images()?;
                let classes = &t.train.class_names;
                self.targets_fit(model_init::initial_vit::<B>(
                    m,
                    classes,
                    t.train.channels,
                    seed,
                    device,
                )?)
            }
            Architecture::Bert => {
                let classes = self.text()?.train.class_names().len();
                self.targets_fit(model_init::initial_bert::<B>(m, classes, seed, device)?)
            }
            Architecture::Gpt2 => {
                self.targets_fit(model_init::initial_gpt2::<B>(m, self.tokenizer()?, seed, device)?)
            }
        }
    }

    fn targets_fit<
        B: burn::tensor::backend::Backend,
        M: lora_core::LoraModel<B> + burn::module::Module<B>,
    >(
        &self,
        model: M,
    ) -> Result<()> {
        let u = &self.cfg.unlearn;
        if u.method != Method::Rfa && u.adapter == "full" {
            return Ok(()); // every weight is trained: no targets
        }
        let cfg = LoraConfig::new(u.rank, u.alpha, TargetModules::parse(&u.targets));
        let (_, adapted) = lora_core::attach_lora(model, &cfg)
            .with_context(|| format!("unlearn.targets = \"{}\"", u.targets))?;
        if u.method == Method::Rfa
            && !u.layer_weights.is_empty()
            && u.layer_weights.len() != adapted.len()
        {
            bail!(
                "unlearn.layer_weights has {} weights, but unlearn.targets = \"{}\" adapts {} layers: give one weight per layer, or none",
                u.layer_weights.len(),
                u.targets,
                adapted.len()
            );
        }
        Ok(())
    }

    /// `rfa train` (all of D → `original/`) or `rfa retrain` (Dr only → `retrain/`).
    pub fn train<B: FusedAutodiff>(&self, retrain: bool, device: &B::Device) -> Result<()> {
        self.train_on::<B>(retrain, std::slice::from_ref(device))
    }

    /// [`Run::train`] data-parallel over `devices` ([`crate::data_parallel`]): the first builds
    /// the model; the result equals a one-device training to float rounding.
    pub fn train_on<B: FusedAutodiff>(&self, retrain: bool, devices: &[B::Device]) -> Result<()> {
        let device = devices.first().context("no device to train on")?;
        let (folder, command) =
            if retrain { (Role::Retrained, "rfa retrain") } else { (Role::Original, "rfa train") };
        let _lock = RunLock::folder(&self.dir, &folder.folder(), command)?;
        let (m, seed) = (&self.cfg.model, self.cfg.seed);
        match self.arch {
            Architecture::Vit => {
                let t = self.images()?;
                let model = model_init::initial_vit::<B>(
                    m,
                    &t.train.class_names,
                    t.train.channels,
                    seed,
                    device,
                )?;
                self.train_with(model, t, retrain, devices)
            }
            Architecture::Bert => {
                let t = self.text()?;
                self.train_with(
                    model_init::initial_bert::<B>(m, t.train.class_names().len(), seed, device)?,
                    t,
                    retrain,
                    devices,
                )
            }
            Architecture::Gpt2 => {
                let tok = self.tokenizer()?;
                self.train_with(
                    model_init::initial_gpt2::<B>(m, tok, seed, device)?,
                    self.text()?,
                    retrain,
                    devices,
                )
            }
        }
    }

    fn train_with<B: FusedAutodiff, M: EngineModel<B> + AutodiffModule<B>>(
        &self,
        model: M,
        task: &Task<M::Data>,
        retrain: bool,
        devices: &[B::Device],
    ) -> Result<()>
where {
        let (what, role) =
            if retrain { ("retrain", Role::Retrained) } else { ("train", Role::Original) };
        let indices = training_indices(task, retrain);
        let out = role.dir(&self.dir);
        // A checkpoint here is resumed, a finished model reused: only if it was made from this
        // configuration and these samples.
        let fingerprint = self.training_fingerprint(task, retrain)?;
        let resume = match fingerprint.check(&out, &format!("pass --force to {what} from scratch"))
        {
            Ok(()) => true,
            Err(e) if self.force => {
                // The old folder stays until the first epoch's state replaces it.
                eprintln!(
                    "{what}: --force: starting over; {} will be replaced ({e:#})",
                    out.display()
                );
                false
            }
            Err(e) => return Err(e),
        };
        let params = lora_core::count_params(&model).total;
        let extras = |dir: &Path| -> Result<()> {
            fingerprint.write(dir)?;
            self.copy_tokenizer(dir)
        };
        let ckpt = Checkpoints { dir: &out, resume, extras: &extras };
        let prev = if resume { read_phase(&out).ok() } else { None };
        let (_, phase) = measure(|| {
            train_model(
                model,
                &task.train,
                &indices,
                &self.cfg.train,
                self.cfg.seed,
                what,
                &ckpt,
                devices,
            )
        })?;
        // Continuing a finished training (more epochs) adds that training's time.
        let phase = Phase {
            seconds: phase.seconds + prev.map(|p| p.phase.seconds).unwrap_or(0.0),
            ..phase
        };
        // The phase record completes the folder: written into a copy and switched in whole.
        let staged = StagedDir::continuing(&out)?;
        write_phase(
            staged.path(),
            PhaseRecord {
                phase,
                trainable_params: params,
                ran_on: self.ran_on(None),
                base_model_sha256: None,
                files: Default::default(),
            },
        )?;
        staged.commit()?;
        self.record_config()
    }

    /// `rfa unlearn --method NAME`: under `NAME/` (or `NAME-s<seed>/`), the adapter (PEFT) when
    /// adapters were trained, and the merged model (Hugging Face).
    pub fn unlearn<B: FusedAutodiff>(&self, device: &B::Device) -> Result<()> {
        self.unlearn_on::<B>(std::slice::from_ref(device))
    }

    /// [`Run::unlearn`] with RFA's steps data-parallel over `devices`
    /// ([`crate::data_parallel`]); the baselines and every measurement run on the first.
    pub fn unlearn_on<B: FusedAutodiff>(&self, devices: &[B::Device]) -> Result<()> {
        let _lock = RunLock::folder(
            &self.dir,
            &self.cfg.unlearn.out_dir(),
            &format!("rfa unlearn --method {}", self.cfg.unlearn.method),
        )?;
        match self.arch {
            Architecture::Vit => self.unlearn_with::<B, Vit<B>>(self.images()?, devices),
            Architecture::Bert => self.unlearn_with::<B, Bert<B>>(self.text()?, devices),
            Architecture::Gpt2 => self.unlearn_with::<B, Gpt2<B>>(self.text()?, devices),
        }
    }

    fn unlearn_with<B, M>(&self, task: &Task<M::Data>, devices: &[B::Device]) -> Result<()>
    where
        B: FusedAutodiff,
        M: EngineModel<B> + AutodiffModule<B>,
        M::InnerModule: EngineModel<Inner<B>, Data = M::Data>,
    {
        let device = devices.first().context("no device to unlearn on")?;
        let unlearn_cfg = &self.cfg.unlearn;
        let base_dtype = unlearn_cfg.base_dtype()?;
        let result_dir = self.dir.join(unlearn_cfg.out_dir());
        let start = self.start_model(task)?;
        let mut m0 = <M as EngineModel<B>>::load(&start.dir, device).with_context(|| {
            format!("loading the model to unlearn from ({})", start.dir.display())
        })?;
        if let Some(dt) = base_dtype {
            lora_core::set_base_dtype(&mut m0, dt);
        }
        let seed = unlearn_cfg.seed.unwrap_or(self.cfg.seed);
        let ((model, log), phase) = measure(|| {
            if unlearn_cfg.method == Method::Rfa {
                let settings = unlearn_cfg.rfa_settings(task.scenario(m0.num_labels().is_none()));
                unlearn_rfa(m0, task, unlearn_cfg, &settings, seed, devices)
            } else {
                if devices.len() > 1 {
                    eprintln!(
                        "{}: baselines run on the first device (data-parallel is RFA's and training's)",
                        unlearn_cfg.method
                    );
                }
                baselines::unlearn_baseline(m0, task, unlearn_cfg, seed, device)
            }
        })?;
        // Written beside an earlier result of this method and switched in whole once complete:
        // a failure (a non-finite weight, a full disk) or a kill keeps the earlier result.
        let staged = StagedDir::new(&result_dir)?;
        let out = staged.path();
        // Where the adapter's base is, seen from the result's adapter/ folder (PEFT's
        // base_model_name_or_path): M0, or the previous request's model.
        let input_model = chain::relative_path(&absolute(&result_dir)?, &absolute(&start.dir)?);
        if !log.adapted.is_empty() {
            lora_core::save_adapter(
                &model,
                &out.join("adapter"),
                Some(&format!("../{input_model}")),
                unlearn_cfg.module_names,
            )?;
        }
        let mut merged = match base_dtype {
            // The bf16 copy of W0 is lossy: the f32 adapter goes into the f32 original instead.
            Some(_) => {
                let mut m = <M::InnerModule as EngineModel<Inner<B>>>::load(&start.dir, device)?;
                lora_core::load_adapter(&mut m, &out.join("adapter"))?;
                m
            }
            None => model.valid(),
        };
        // Measured with the adapters still attached: their residual norms are among the metrics.
        let metrics =
            self.receipt_metrics::<Inner<B>, M::InnerModule>(&merged, task, seed, device)?;
        lora_core::merge_and_unload(&mut merged);
        merged.save(&out.join("merged"))?;
        self.copy_tokenizer(&out.join("merged"))?;
        write_json(&out.join("unlearn_log.json"), &log)?;
        let precision = base_dtype.map(|_| format!("frozen weights in {}", unlearn_cfg.dtype));
        let outputs = self.write_receipt(
            out,
            task,
            &start,
            ReceiptParts { log: &log, seed, precision: precision.clone(), metrics, input_model },
        )?;
        let times = log.step_times();
        let phase = Phase {
            first_step_seconds: times.map(|t| t.first_seconds),
            median_step_seconds: times.and_then(|t| t.median_seconds),
            ..phase
        };
        write_phase(
            out,
            PhaseRecord {
                phase,
                trainable_params: log.trainable_params,
                ran_on: self.ran_on(precision),
                base_model_sha256: start.files.get("model.safetensors").cloned(),
                // The receipt's digests of adapter/ and merged/: hashed once.
                files: outputs,
            },
        )?;
        staged.commit()?;
        // A reversal of the result just replaced reverses nothing that exists any more.
        let stale = self.dir.join(format!("{}{}", unlearn_cfg.out_dir(), chain::REVERTED_SUFFIX));
        if stale.is_dir() {
            let name = stale.file_name().expect("named").to_string_lossy().into_owned();
            let _lock = RunLock::folder(&self.dir, &name, "rfa unlearn")?;
            std::fs::remove_dir_all(&stale)
                .with_context(|| format!("removing the stale reversal {}", stale.display()))?;
        }
        self.record_config()
    }

    /// The model an unlearning starts from: M0 (`original/`, checked against this run's
    /// configuration and its phase record), or after `data.after` the model the previous
    /// entry of the chain left (checked against that entry's receipt). A run that continues a
    /// chain gets the chain's M0 as its own `original/` (hard links), for `rfa eval`.
    fn start_model<D: Samples>(&self, task: &Task<D>) -> Result<StartModel> {
        if let Some(last) = self.after.last() {
            let (dir, files) = last.verified_model()?;
            self.link_chain_original(task)?;
            return Ok(StartModel { dir, files, previous: Some(last.clone()) });
        }
        self.check_trained(task, false)?;
        let original = Role::Original.dir(&self.dir);
        let record = verify_phase(&original).with_context(|| {
            format!("{} holds no complete M0 (run `rfa train` first)", original.display())
        })?;
        // The record's digests (checked just now) and phase.json's own.
        let mut files = record.files.clone();
        files.insert(
            crate::PHASE_RECORD.into(),
            crate::fingerprint::sha256_file(&original.join(crate::PHASE_RECORD))?,
        );
        if !files.contains_key("model.safetensors") {
            files.insert(
                "model.safetensors".into(),
                record.sha256_of(&original, "model.safetensors")?,
            );
        }
        Ok(StartModel { dir: original, files, previous: None })
    }

    /// Gives a run that continues a chain the chain's M0 as `original/` when it has none: the
    /// first request's input model, if it was made under this run's configuration.
    fn link_chain_original<D: Samples>(&self, task: &Task<D>) -> Result<()> {
        let original = Role::Original.dir(&self.dir);
        if original.exists() {
            return self.check_trained(task, false);
        }
        let _lock = RunLock::folder(&self.dir, "original", "rfa unlearn --after (M0)")?;
        let Some(chain::Entry::Unlearning(first)) = self.after.first().map(|l| &l.entry) else {
            return Ok(());
        };
        let root = self.after[0].folder().join(&first.input_model);
        if verify_phase(&root).is_err() {
            return Ok(()); // not a run's original/: eval will say what is missing
        }
        let staged = StagedDir::new(&original)?;
        for e in std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))? {
            let p = e?.path();
            let to = staged.path().join(p.file_name().expect("a file name"));
            if p.is_file() && std::fs::hard_link(&p, &to).is_err() {
                std::fs::copy(&p, &to).with_context(|| format!("copying {}", p.display()))?;
            }
        }
        if self.training_fingerprint(task, false)?.check(staged.path(), "").is_err() {
            return Ok(()); // another M0: left out, the staged copy is dropped
        }
        staged.commit()
    }

    /// The receipt's metrics of the result on the validation probes (classifiers only).
    fn receipt_metrics<B: rfa_models::FusedOps, M: EngineModel<B>>(
        &self,
        model: &M,
        task: &Task<M::Data>,
        seed: u64,
        device: &B::Device,
    ) -> Result<Option<receipt::Metrics>> {
        if model.num_labels().is_none() {
            return Ok(None);
        }
        let probes = Probes::draw(task, self.cfg.unlearn.probe_samples, seed);
        let criterion = Criterion::new(&self.cfg.unlearn, task.split.class, &probes);
        let c = probe::measure(model, task, &probes, &criterion, None, 0, device)?;
        // Mean residual norm ||r_l|| of the adapters on the Df and Dr probes (none without
        // adapters).
        let residual = |set: &[usize]| -> Result<Option<f64>> {
            let r = crate::engine::outputs(model, &task.train, set, device)?.residual_norms;
            Ok((!r.is_empty()).then(|| r.iter().map(|&x| x as f64).sum::<f64>() / r.len() as f64))
        };
        Ok(Some(receipt::Metrics {
            residual_norm_forget: residual(&probes.forget)?,
            residual_norm_retain: residual(&probes.retain)?,
            forget_accuracy: c.forget_accuracy.unwrap_or(f64::NAN),
            retain_accuracy: c.retain_accuracy,
            validation_accuracy: c.validation_accuracy,
            membership_auc: c.membership_auc,
            forgotten_class_share: c.forgotten_class_share,
            forget_samples: probes.forget.len(),
            retain_samples: probes.retain.len(),
            validation_samples: probes.validation.len(),
        }))
    }

    /// `receipt.json` and `receipt.salt` (and `receipt.sig` with `--sign`) for the result being
    /// written in `out`: the request, the input model's files, the samples' digests, the
    /// settings, the metrics, the previous entry of the chain, and the SHA-256 of every file of
    /// `adapter/` and `merged/`, which it returns.
    fn write_receipt<D: Samples>(
        &self,
        out: &Path,
        task: &Task<D>,
        start: &StartModel,
        parts: ReceiptParts,
    ) -> Result<receipt::Digests> {
        let unlearn_cfg = &self.cfg.unlearn;
        let salt = receipt::new_salt()?;
        let mut outputs = receipt::Digests::new();
        for sub in ["adapter", "merged"] {
            if out.join(sub).is_dir() {
                outputs.extend(receipt::digests(&out.join(sub), &format!("{sub}/"))?);
            }
        }
        let all: Vec<usize> = (0..task.train.len()).collect();
        let result_dir = absolute(&self.dir.join(unlearn_cfg.out_dir()))?;
        let (previous, previous_receipt) = match &start.previous {
            Some(link) => (
                Some(link.sha256.clone()),
                Some(chain::relative_path(&result_dir, &absolute(&link.path)?)),
            ),
            None => (None, None),
        };
        let log = parts.log;
        let r = receipt::Receipt {
            format: receipt::FORMAT.into(),
            statement: receipt::STATEMENT.into(),
            request: receipt::request(
                &self.cfg.data.forget,
                &task.split.forget,
                &salt,
                task.split.repeated.len(),
                task.split.earlier.len(),
            ),
            method: unlearn_cfg.method.name().into(),
            seed: parts.seed,
            config: serde_json::to_value(&self.cfg)?,
            rfa_version: env!("CARGO_PKG_VERSION").into(),
            backend: self.ran_on(parts.precision),
            dtype: unlearn_cfg.dtype.clone(),
            stop: log.stop.as_ref().map(|s| {
                format!(
                    "{:?} after step {}, kept the adapter of step {}",
                    s.reason, s.stopped_after_step, s.kept_step
                )
            }),
            input_model: parts.input_model,
            input_model_files: start.files.clone(),
            train_samples_sha256: crate::fingerprint::samples_digest(&task.train, &all),
            forget_samples_sha256: crate::fingerprint::samples_digest(
                &task.train,
                &task.split.forget,
            ),
            outputs,
            previous,
            previous_receipt,
            git_commit: receipt::git_commit(),
            created: Some(receipt::utc_now()),
            metrics: parts.metrics,
            // The embedded data set has no files; its samples' digests stand for it.
            data_files: match &self.cfg.data.path {
                p if p.as_os_str().is_empty() => None,
                p => Some(receipt::write_data_files(out, p)?),
            },
        };
        let bytes = r.to_bytes()?;
        receipt::write_salt(&out.join(receipt::SALT), &salt)?;
        lora_core::tensors::write_atomic(&out.join(receipt::RECEIPT), &bytes)?;
        if let Some(key) = &self.sign {
            signature::write(&out.join(signature::SIGNATURE), &signature::sign(&bytes, key))?;
        }
        Ok(r.outputs)
    }

    /// The unlearning results in the run folder, in [`Method::ALL`]'s order then by seed.
    pub fn unlearned(&self) -> Vec<Role> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut found: Vec<(Method, Option<u64>)> = entries
            .filter_map(|e| match Role::of_folder(&e.ok()?.file_name().to_string_lossy())? {
                Role::Unlearned { method, seed } => Some((method, seed)),
                Role::Original | Role::Retrained => None,
            })
            .filter(|&(method, seed)| {
                let p = Role::Unlearned { method, seed }.dir(&self.dir);
                p.join("phase.json").is_file()
                    && (p.join("adapter").is_dir() || p.join("merged").is_dir())
            })
            .collect();
        // A seedless result sorts with seed 0.
        found.sort_by_key(|&(method, seed)| (method, seed.unwrap_or(0)));
        found.into_iter().map(|(method, seed)| Role::Unlearned { method, seed }).collect()
    }
}

/// The model an unlearning starts from.
struct StartModel {
    dir: std::path::PathBuf,
    /// SHA-256 of its files, by path relative to `dir`.
    files: receipt::Digests,
    /// The chain entry that left it (`data.after`); none when it is M0.
    previous: Option<chain::Link>,
}

/// What the receipt records besides the request and the files.
struct ReceiptParts<'a> {
    log: &'a crate::engine::UnlearnLog,
    seed: u64,
    precision: Option<String>,
    metrics: Option<receipt::Metrics>,
    /// The input model's folder relative to the result's.
    input_model: String,
}

/// `p` made absolute with `..` resolved; a path whose last part does not exist yet (a result
/// folder before its first commit) is resolved through its parent.
fn absolute(p: &Path) -> Result<std::path::PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Ok(c);
    }
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = p.file_name().with_context(|| format!("{} has no name", p.display()))?;
    Ok(parent.canonicalize().with_context(|| format!("resolving {}", p.display()))?.join(name))
}
