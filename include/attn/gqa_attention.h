// SPDX-License-Identifier: Apache-2.0
// MHA (G = H), GQA (1 < G < H) and MQA (G = 1): one layer parameterised by G (docs/semantics.md
// §1).
#ifndef ATTN_GQA_ATTENTION_H_
#define ATTN_GQA_ATTENTION_H_

#include <memory>

#include "attn/layer.h"
#include "attn/rope.h"

namespace attn {
namespace layers {
class KVStore;
}  // namespace layers

// Projection weights stored [out, in] as in PyTorch/safetensors. Biases are empty tensors
// when the model has none.
struct GqaWeights {
  Weight q_proj;  // [H·d, D]
  Weight k_proj;  // [G·d, D]
  Weight v_proj;  // [G·d, D]
  Weight o_proj;  // [D, H·d]
  Tensor q_bias;  // [H·d] (Qwen2, Llama attention_bias)
  Tensor k_bias;  // [G·d]
  Tensor v_bias;  // [G·d]
  Tensor o_bias;  // [D]   (Llama attention_bias)
  Tensor q_norm;  // [d] per head (Qwen3) or [H·d] whole projection (OLMo 2); empty = none
  Tensor k_norm;  // [d] or [G·d]
  Tensor sinks;   // [H] attention-sink logits (GPT-OSS); empty = none
};

class GqaAttention : public AttentionLayer {
 public:
  // `layer` selects the per-layer rules of models that vary them: window, RoPE (Gemma 3's local
  // one, Llama 4's NoPE layers), attention chunk.
  // Throws Error(kInvalidArgument) if a weight's shape does not match the config.
  GqaAttention(const ModelConfig& config, int64_t layer, GqaWeights weights);

  const ModelConfig& config() const override { return config_; }
  std::unique_ptr<Cache> NewCache(int64_t batch, int64_t capacity, DType dtype,
                                  MlaForm form) const override;
  void StepInto(const TokenBatch& batch, Cache& cache, MlaForm form, Tensor& out) const override;
  void StepPagedInto(const TokenBatch& batch, PagedKVPool& pool,
                     std::span<const PagedKVPool::SequenceId> ids, MlaForm form,
                     Tensor& out) const override;
  void StepWithStore(const TokenBatch& batch, layers::KVStore& store, MlaForm form,
                     Tensor& out) const override;

 private:
  ModelConfig config_;
  // The one step: projections, norms, RoPE, append to `store`, attend, o_proj.
  void StepWith(const TokenBatch& batch, layers::KVStore& store, Tensor& out) const;

  int64_t window_;
  int64_t chunk_;
  bool rotates_;  // false: a NoPE layer or an ALiBi model
  float scale_;
  RotaryEmbedding rope_;
  std::vector<float> alibi_slopes_;  // [H] in logit units, or empty
  GqaWeights weights_;
};

}  // namespace attn

#endif  // ATTN_GQA_ATTENTION_H_
