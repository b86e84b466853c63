//! `forward_taps` (the pass RFA's unlearning runs: it ends at the last adapted layer) gives the
//! same taps as the full forward pass — values and the adapters' gradients through them — for
//! GPT-2, BERT and ViT, with adapters on every kind of layer, on the last block only, on the
//! first layer only, and on the head, on ndarray and flex.

use burn::module::Param;
use burn::tensor::{Distribution, Int, Tensor};
use lora_core::Tap;
use lora_core::{LoraConfig, LoraModel, TargetModules, attach_lora};
use rfa_models::{
    BertConfig, BertForSequenceClassification, FusedAutodiff, Gpt2Config, Gpt2LmHeadModel,
    VitConfig, VitForImageClassification,
};

mod common;

type Nd = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
type Fx = burn::backend::Autodiff<burn::backend::Flex>;

/// Attaches adapters to `targets` with random B (so that every adapter changes what follows it).
fn adapted<AB: FusedAutodiff, M: LoraModel<AB> + burn::module::Module<AB>>(
    model: M,
    targets: &str,
    device: &AB::Device,
) -> M {
    let (mut model, paths) =
        attach_lora(model, &LoraConfig::new(2, 4.0, TargetModules::parse(targets))).unwrap();
    assert!(!paths.is_empty(), "`{targets}` adapted nothing");
    for (_, l) in model.linears_mut() {
        if let Some(a) = l.lora.as_mut() {
            let dims = a.lora_b.val().dims();
            a.lora_b = Param::from_tensor(
                Tensor::random(dims, Distribution::Uniform(-0.5, 0.5), device).require_grad(),
            );
        }
    }
    model
}

fn host<AB: FusedAutodiff>(t: Tensor<AB, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// A scalar that depends on every tap: what the gradients are compared through.
fn objective<AB: FusedAutodiff>(taps: &[Tap<AB>]) -> Tensor<AB, 1> {
    taps.iter()
        .map(|t| {
            t.residual.clone().powf_scalar(2.0).mean() + (t.pre.clone() + t.residual.clone()).mean()
        })
        .reduce(|a, b| a + b)
        .unwrap()
}

fn adapter_grads<AB: FusedAutodiff, M: LoraModel<AB>>(
    model: &M,
    loss: Tensor<AB, 1>,
) -> Vec<Vec<f32>> {
    let grads = loss.backward();
    let mut all = Vec::new();
    for (_, l) in model.linears() {
        if let Some(a) = &l.lora {
            for p in [&a.lora_a, &a.lora_b] {
                all.push(
                    p.val()
                        .grad(&grads)
                        .expect("adapter gradient")
                        .into_data()
                        .convert::<f32>()
                        .to_vec()
                        .unwrap(),
                );
            }
        }
    }
    all
}

fn same<AB: FusedAutodiff, M: LoraModel<AB>>(
    what: &str,
    model: &M,
    full: Vec<Tap<AB>>,
    only: Vec<Tap<AB>>,
) {
    assert_eq!(
        only.len(),
        lora_core::adapted_paths(model).len(),
        "{what}: one tap per adapted layer"
    );
    assert_eq!(only.len(), full.len(), "{what}");
    for (i, (f, o)) in full.iter().zip(&only).enumerate() {
        assert_eq!(host(f.pre.clone()), host(o.pre.clone()), "{what}: tap {i} pre");
        assert_eq!(host(f.residual.clone()), host(o.residual.clone()), "{what}: tap {i} residual");
    }
    let (gf, go) = (adapter_grads(model, objective(&full)), adapter_grads(model, objective(&only)));
    assert_eq!(gf, go, "{what}: adapter gradients");
}

fn gpt2<AB: FusedAutodiff>() {
    let device = Default::default();
    let cfg = Gpt2Config::new(50, 16, 16, 3, 2);
    let ids = Tensor::<AB, 2, Int>::from_ints([[1, 7, 3, 9, 4, 0], [5, 2, 8, 8, 1, 3]], &device);
    let mask = Tensor::<AB, 2, Int>::from_ints([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], &device);
    for targets in [
        "c_attn,c_proj,c_fc",
        "c_attn",
        r"transformer\.h\.2\.attn\.c_proj",
        r"transformer\.h\.0\.attn\.c_attn",
    ] {
        let model =
            adapted(Gpt2LmHeadModel::<AB>::init(&cfg, 3, &device).unwrap(), targets, &device);
        let full = model.forward(ids.clone(), Some(mask.clone())).taps;
        same(
            &format!("gpt2 {targets}"),
            &model,
            full,
            model.forward_taps(ids.clone(), Some(mask.clone())),
        );
    }
}

fn bert<AB: FusedAutodiff>() {
    let device = Default::default();
    let cfg = BertConfig::new(40, 16, 16, 2, 4);
    let ids = Tensor::<AB, 2, Int>::from_ints([[2, 7, 3, 9, 4], [5, 2, 8, 0, 0]], &device);
    let mask = Tensor::<AB, 2, Int>::from_ints([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], &device);
    for targets in [
        "query,value",
        "query,key,value,dense,classifier",
        "dense",
        r"bert\.encoder\.layer\.0\.attention\.self\.key",
    ] {
        let model = adapted(
            BertForSequenceClassification::<AB>::init(&cfg, 5, &device).unwrap(),
            targets,
            &device,
        );
        let full = model.forward(ids.clone(), Some(mask.clone()), None).taps;
        same(
            &format!("bert {targets}"),
            &model,
            full,
            model.forward_taps(ids.clone(), Some(mask.clone()), None),
        );
    }
}

fn vit<AB: FusedAutodiff>() {
    let device = Default::default();
    let names: Vec<String> = (0..3).map(|i| i.to_string()).collect();
    let cfg = VitConfig::new(8, 4, 3, 16, 2, 2, 32, &names);
    let x = Tensor::<AB, 4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    for targets in [
        "query,value",
        "query,value,dense,classifier",
        "classifier",
        r"vit\.encoder\.layer\.1\.output\.dense",
    ] {
        let model = adapted(
            VitForImageClassification::<AB>::init(&cfg, 7, &device).unwrap(),
            targets,
            &device,
        );
        let full = model.forward(x.clone()).taps;
        same(&format!("vit {targets}"), &model, full, model.forward_taps(x.clone()));
    }
}

#[test]
fn gpt2_taps_only_equal_the_full_pass() {
    gpt2::<Nd>();
    gpt2::<Fx>();
}

#[test]
fn bert_taps_only_equal_the_full_pass() {
    bert::<Nd>();
    bert::<Fx>();
}

#[test]
fn vit_taps_only_equal_the_full_pass() {
    vit::<Nd>();
    vit::<Fx>();
}

/// RFA's per-layer terms as one node (`ops::tap_terms`: what libtorch and the GPU backends run)
/// against the same definition differentiated op by op, on ndarray and flex.
#[test]
fn tap_terms_node_equals_its_op_by_op_definition() {
    fn check<A: FusedAutodiff>(label: &str) {
        for cls in [false, true] {
            let (ops, node) = (
                common::tap_terms_case::<A>(&Default::default(), false, cls),
                common::tap_terms_case::<A>(&Default::default(), true, cls),
            );
            for (name, (a, b)) in ["terms", "dpre", "dres"].iter().zip(ops.iter().zip(&node)) {
                let err = common::max_rel_error(a, b);
                assert!(err <= 1e-6, "{label} cls {cls} {name}: {err}");
            }
        }
    }
    check::<Nd>("ndarray");
    check::<Fx>("flex");
}
