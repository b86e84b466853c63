//! The outputs of a forward pass (Hugging Face's `modeling_outputs`).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use lora_core::Taps;

/// Output of a sequence or image classifier (ViT, BERT).
#[derive(Debug, Clone)]
pub struct ClassifierOutput<B: Backend> {
    /// `[batch, num_labels]`
    pub logits: Tensor<B, 2>,
    /// Hugging Face's `hidden_states`: the embeddings, then the output of every block.
    pub hidden_states: Vec<Tensor<B, 3>>,
    /// The classifier's input: ViT's final-normed CLS token, BERT's pooled output.
    pub features: Tensor<B, 2>,
    pub taps: Taps<B>,
}

/// Output of a causal language model (GPT-2).
#[derive(Debug, Clone)]
pub struct CausalLmOutput<B: Backend> {
    /// `[batch, seq, vocab]`
    pub logits: Tensor<B, 3>,
    /// The embeddings, then the output of every block; the last one after `ln_f`, as in
    /// Hugging Face.
    pub hidden_states: Vec<Tensor<B, 3>>,
    /// The last hidden state (after `ln_f`), `[batch, seq, hidden]`.
    pub features: Tensor<B, 3>,
    pub taps: Taps<B>,
}
