// SPDX-License-Identifier: Apache-2.0
#include "attn/layer_weights.h"

#include <cmath>
#include <memory>
#include <vector>

#include "attn/error.h"
#include "attn/gqa_attention.h"
#include "attn/mla_attention.h"

namespace attn {
namespace {

std::vector<WeightSpec> GqaSpecs(const ModelConfig& c) {
  const int64_t q_width = c.num_heads * c.gqa.head_dim;
  const int64_t kv_width = c.gqa.num_kv_heads * c.gqa.head_dim;
  using K = WeightSpec::Kind;
  std::vector<WeightSpec> specs = {
      {"q_proj.weight", {q_width, c.hidden_size}, K::kMatrix},
      {"k_proj.weight", {kv_width, c.hidden_size}, K::kMatrix},
      {"v_proj.weight", {kv_width, c.hidden_size}, K::kMatrix},
      {"o_proj.weight", {c.hidden_size, q_width}, K::kMatrix},
  };
  if (c.gqa.qkv_bias) {
    specs.push_back({"q_proj.bias", {q_width}, K::kBias});
    specs.push_back({"k_proj.bias", {kv_width}, K::kBias});
    specs.push_back({"v_proj.bias", {kv_width}, K::kBias});
  }
  if (c.gqa.o_bias) specs.push_back({"o_proj.bias", {c.hidden_size}, K::kBias});
  if (c.gqa.attention_sinks) specs.push_back({"sinks", {c.num_heads}, K::kSink});
  if (c.gqa.qk_norm == QkNorm::kPerHead) {
    specs.push_back({"q_norm.weight", {c.gqa.head_dim}, K::kNormScale});
    specs.push_back({"k_norm.weight", {c.gqa.head_dim}, K::kNormScale});
  } else if (c.gqa.qk_norm == QkNorm::kWholeProjection) {
    specs.push_back({"q_norm.weight", {q_width}, K::kNormScale});
    specs.push_back({"k_norm.weight", {kv_width}, K::kNormScale});
  }
  return specs;
}

std::vector<WeightSpec> MlaSpecs(const ModelConfig& c) {
  const MlaDims& m = c.mla;
  const int64_t q_width = c.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim);
  using K = WeightSpec::Kind;
  std::vector<WeightSpec> specs;
  if (m.q_lora_rank > 0) {
    specs.push_back({"q_a_proj.weight", {m.q_lora_rank, c.hidden_size}, K::kMatrix});
    specs.push_back({"q_a_layernorm.weight", {m.q_lora_rank}, K::kNormScale});
    specs.push_back({"q_b_proj.weight", {q_width, m.q_lora_rank}, K::kMatrix});
  } else {
    specs.push_back({"q_proj.weight", {q_width, c.hidden_size}, K::kMatrix});
  }
  specs.push_back({"kv_a_proj_with_mqa.weight",
                   {m.kv_lora_rank + m.qk_rope_head_dim, c.hidden_size},
                   K::kMatrix});
  specs.push_back({"kv_a_layernorm.weight", {m.kv_lora_rank}, K::kNormScale});
  specs.push_back({"kv_b_proj.weight",
                   {c.num_heads * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank},
                   K::kMatrix});
  specs.push_back({"o_proj.weight", {c.hidden_size, c.num_heads * m.v_head_dim}, K::kMatrix});
  return specs;
}

// Removes and returns weights[name] as stored; an empty weight when absent and not `required`.
Weight Take(NamedWeights& weights, const std::string& name, bool required) {
  auto it = weights.find(name);
  if (it == weights.end()) {
    Check(!required, ErrorKind::kNotFound, "missing attention weight '" + name + "'");
    return Weight();
  }
  Weight weight = std::move(it->second);
  weights.erase(it);
  return weight;
}

// A bias or norm scale: a few thousand values, kept in fp32 whatever the file stores (exact for
// bf16/f16; the projections are what is worth keeping in the stored dtype).
Tensor TakeVector(NamedWeights& weights, const std::string& name, bool required) {
  const Weight weight = Take(weights, name, required);
  if (weight.empty()) return Tensor();
  Check(weight.dtype() != DType::kF8E4M3, ErrorKind::kInvalidArgument,
        name + ": F8_E4M3 is only read for projection matrices, not for a " +
            ShapeToString(weight.shape()) + " vector");
  return weight.ToF32();
}

// splitmix64 (Steele, Lea, Flood 2014): a tiny, well-mixed, portable generator, so the same
// seed gives the same weights on every machine and compiler.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1).
  float Symmetric() {
    const double unit = static_cast<double>(Next() >> 11) * 0x1.0p-53;  // [0, 1)
    return static_cast<float>(2.0 * unit - 1.0);
  }

 private:
  uint64_t state_;
};

}  // namespace

const char* const kIgnoredTensor = "rotary_emb.inv_freq";

std::vector<WeightSpec> AttentionWeightSpecs(const ModelConfig& config) {
  return config.kind == AttentionKind::kGqa ? GqaSpecs(config) : MlaSpecs(config);
}

NamedWeights ToNamedWeights(NamedTensors tensors) {
  NamedWeights weights;
  for (auto& [name, tensor] : tensors) weights.emplace(name, Weight(std::move(tensor)));
  return weights;
}

NamedWeights StoreAttentionWeights(const ModelConfig& config, NamedTensors weights, DType dtype) {
  std::map<std::string, WeightSpec::Kind> kinds;
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) kinds[spec.name] = spec.kind;
  NamedWeights stored;
  for (auto& [name, tensor] : weights) {
    const auto kind = kinds.find(name);
    const bool matrix = kind != kinds.end() && kind->second == WeightSpec::Kind::kMatrix;
    stored.emplace(name,
                   StoreMatrix(std::move(tensor), matrix ? dtype : DType::kF32,
                               config.quantization.block_rows, config.quantization.block_cols));
  }
  return stored;
}

std::unique_ptr<AttentionLayer> BuildAttentionLayer(const ModelConfig& config, int64_t layer,
                                                    NamedTensors weights) {
  return BuildAttentionLayer(config, layer, ToNamedWeights(std::move(weights)));
}

std::unique_ptr<AttentionLayer> BuildAttentionLayer(const ModelConfig& config, int64_t layer,
                                                    NamedWeights weights) {
  ValidateConfig(config);
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) {
    auto it = weights.find(spec.name);
    Check(it != weights.end(), ErrorKind::kNotFound,
          "missing attention weight '" + spec.name + "'");
    Check(it->second.shape() == spec.shape, ErrorKind::kInvalidArgument,
          spec.name + ": expected shape " + ShapeToString(spec.shape) + ", got " +
              ShapeToString(it->second.shape()));
    Check(it->second.dtype() != DType::kF8E4M3 || it->second.block_scales() != nullptr,
          ErrorKind::kInvalidArgument, spec.name + ": F8_E4M3 weight without its block scales");
  }
  std::unique_ptr<AttentionLayer> built;
  if (config.kind == AttentionKind::kGqa) {
    GqaWeights w;
    w.q_proj = Take(weights, "q_proj.weight", true);
    w.k_proj = Take(weights, "k_proj.weight", true);
    w.v_proj = Take(weights, "v_proj.weight", true);
    w.o_proj = Take(weights, "o_proj.weight", true);
    w.q_bias = TakeVector(weights, "q_proj.bias", config.gqa.qkv_bias);
    w.k_bias = TakeVector(weights, "k_proj.bias", config.gqa.qkv_bias);
    w.v_bias = TakeVector(weights, "v_proj.bias", config.gqa.qkv_bias);
    w.o_bias = TakeVector(weights, "o_proj.bias", config.gqa.o_bias);
    // Llama 4's L2 norm has no weights.
    const bool qk_norm = config.gqa.qk_norm != QkNorm::kNone && config.gqa.qk_norm != QkNorm::kL2;
    w.q_norm = TakeVector(weights, "q_norm.weight", qk_norm);
    w.k_norm = TakeVector(weights, "k_norm.weight", qk_norm);
    w.sinks = TakeVector(weights, "sinks", config.gqa.attention_sinks);
    weights.erase(kIgnoredTensor);
    Check(weights.empty(), ErrorKind::kInvalidArgument,
          "unexpected attention weight '" + (weights.empty() ? "" : weights.begin()->first) +
              "' for this config");
    built = std::make_unique<GqaAttention>(config, layer, std::move(w));
  } else {
    Check(layer >= 0 && layer < config.num_layers, ErrorKind::kInvalidArgument,
          "layer " + std::to_string(layer) + " out of range (model has " +
              std::to_string(config.num_layers) + " layers)");
    const bool q_lora = config.mla.q_lora_rank > 0;
    MlaWeights w;
    w.q_proj = Take(weights, "q_proj.weight", !q_lora);
    w.q_a_proj = Take(weights, "q_a_proj.weight", q_lora);
    w.q_a_layernorm = TakeVector(weights, "q_a_layernorm.weight", q_lora);
    w.q_b_proj = Take(weights, "q_b_proj.weight", q_lora);
    w.kv_a_proj_with_mqa = Take(weights, "kv_a_proj_with_mqa.weight", true);
    w.kv_a_layernorm = TakeVector(weights, "kv_a_layernorm.weight", true);
    w.kv_b_proj = Take(weights, "kv_b_proj.weight", true);
    w.o_proj = Take(weights, "o_proj.weight", true);
    weights.erase(kIgnoredTensor);
    Check(weights.empty(), ErrorKind::kInvalidArgument,
          "unexpected attention weight '" + (weights.empty() ? "" : weights.begin()->first) +
              "' for this config");
    built = std::make_unique<MlaAttention>(config, std::move(w));
  }
  return built;
}

NamedTensors RandomAttentionWeights(const ModelConfig& config, uint64_t seed) {
  ValidateConfig(config);
  SplitMix64 rng(seed);
  NamedTensors weights;
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) {
    Tensor tensor(spec.shape);
    float bound = 0.1f;
    float center = 0.0f;
    if (spec.kind == WeightSpec::Kind::kMatrix) {
      bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(spec.shape[1])));
    } else if (spec.kind == WeightSpec::Kind::kNormScale) {
      bound = 0.25f;
      center = 1.0f;
    } else if (spec.kind == WeightSpec::Kind::kSink) {
      bound = 2.0f;  // logits of the scores' size, so that a sink visibly takes its share
    }
    for (float& value : tensor.values()) value = center + bound * rng.Symmetric();
    weights.emplace(spec.name, std::move(tensor));
  }
  return weights;
}

Tensor RandomUniform(const Shape& shape, uint64_t seed, float bound) {
  SplitMix64 rng(seed);
  Tensor tensor(shape);
  for (float& value : tensor.values()) value = bound * rng.Symmetric();
  return tensor;
}

}  // namespace attn
