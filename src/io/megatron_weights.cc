// SPDX-License-Identifier: Apache-2.0
// One attention layer's tensors under Megatron-Core names (table in attn/megatron.h).
#include <string>
#include <utility>
#include <vector>

#include "attn/error.h"
#include "attn/fused_qkv.h"
#include "attn/hf_weights.h"
#include "attn/megatron.h"

namespace attn {
namespace {

// One MLA tensor: its short HF name and its Megatron spellings (the first is written
// for MegatronNormNames::kLocal, the last for kTransformerEngine; they differ only for norms).
struct MlaName {
  const char* hf;
  const char* local;
  const char* transformer_engine;
};

constexpr MlaName kMlaNames[] = {
    {"q_proj.weight", "linear_q_proj.weight", "linear_q_proj.weight"},
    {"q_a_proj.weight", "linear_q_down_proj.weight", "linear_q_down_proj.weight"},
    {"q_a_layernorm.weight", "q_layernorm.weight", "linear_q_up_proj.layer_norm_weight"},
    {"q_b_proj.weight", "linear_q_up_proj.weight", "linear_q_up_proj.weight"},
    {"kv_a_proj_with_mqa.weight", "linear_kv_down_proj.weight", "linear_kv_down_proj.weight"},
    {"kv_a_layernorm.weight", "kv_layernorm.weight", "linear_kv_up_proj.layer_norm_weight"},
    {"kv_b_proj.weight", "linear_kv_up_proj.weight", "linear_kv_up_proj.weight"},
    {"o_proj.weight", "linear_proj.weight", "linear_proj.weight"},
};

const MlaName& FindMlaName(const std::string& hf) {
  for (const MlaName& name : kMlaNames) {
    if (hf == name.hf) return name;
  }
  throw Error(ErrorKind::kInvalidArgument, "no Megatron-Core name for MLA tensor '" + hf + "'");
}

Tensor ReadChecked(const SafetensorsFile& file, const std::string& name, const Shape& shape) {
  Tensor tensor = file.ReadF32(name);
  CheckShape(tensor, shape, name);
  CheckFinite(tensor, name);
  return tensor;
}

NamedTensors ReadMla(const SafetensorsFile& file, const ModelConfig& config, int64_t layer) {
  const std::string prefix = MegatronAttentionPrefix(layer);
  NamedTensors weights;
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) {
    const MlaName& name = FindMlaName(spec.name);
    const std::string local = prefix + name.local;
    const std::string fused = prefix + name.transformer_engine;
    const bool has_local = file.Contains(local);
    const bool has_fused = local != fused && file.Contains(fused);
    Check(!(has_local && has_fused), ErrorKind::kInvalidArgument,
          "both '" + local + "' and '" + fused + "' are in " + file.path() + "; a layer has one " +
              spec.name.substr(0, spec.name.find('.')));
    if (!has_local && !has_fused) {
      std::string spellings = "'" + local + "'";
      if (local != fused) spellings += " (or '" + fused + "')";
      throw Error(ErrorKind::kNotFound, "Megatron tensor " + spellings + " not found in " +
                                            file.path() + " (HF name " + spec.name + ")");
    }
    const std::string& found = has_local ? local : fused;
    weights.emplace(spec.name, ReadChecked(file, found, spec.shape));
  }
  return weights;
}

NamedTensors ReadGqa(const SafetensorsFile& file, const ModelConfig& config, int64_t layer) {
  const std::string prefix = MegatronAttentionPrefix(layer);
  const int64_t heads = config.num_heads;
  const int64_t kv_heads = config.gqa.num_kv_heads;
  const int64_t d = config.gqa.head_dim;
  const int64_t fused_rows = (heads + 2 * kv_heads) * d;
  auto require = [&](const std::string& name) {
    Check(file.Contains(name), ErrorKind::kNotFound,
          "Megatron tensor '" + name + "' not found in " + file.path());
    return name;
  };
  NamedTensors weights;
  auto split = [&](const std::string& suffix, const Shape& shape) {
    const std::string name = require(prefix + "linear_qkv." + suffix);
    QkvParts parts = SplitGroupedQkv(ReadChecked(file, name, shape), heads, kv_heads, d, name);
    weights.emplace("q_proj." + suffix, std::move(parts.q));
    weights.emplace("k_proj." + suffix, std::move(parts.k));
    weights.emplace("v_proj." + suffix, std::move(parts.v));
  };
  split("weight", {fused_rows, config.hidden_size});
  if (config.gqa.qkv_bias) split("bias", {fused_rows});
  weights.emplace("o_proj.weight", ReadChecked(file, require(prefix + "linear_proj.weight"),
                                               {config.hidden_size, heads * d}));
  if (config.gqa.o_bias) {
    weights.emplace("o_proj.bias",
                    ReadChecked(file, require(prefix + "linear_proj.bias"), {config.hidden_size}));
  }
  return weights;
}

const Tensor& Get(const NamedTensors& weights, const std::string& name) {
  auto it = weights.find(name);
  Check(it != weights.end(), ErrorKind::kNotFound, "missing attention weight '" + name + "'");
  return it->second;
}

}  // namespace

std::string MegatronAttentionPrefix(int64_t layer) {
  return "decoder.layers." + std::to_string(layer) + ".self_attention.";
}

NamedTensors ReadMegatronAttentionWeights(const SafetensorsFile& file, const ModelConfig& config,
                                          int64_t layer) {
  ValidateConfig(config);
  return config.kind == AttentionKind::kMla ? ReadMla(file, config, layer)
                                            : ReadGqa(file, config, layer);
}

void AddMegatronAttentionWeights(SafetensorsWriter& writer, const ModelConfig& config,
                                 const NamedTensors& weights, int64_t layer, DType dtype,
                                 MegatronNormNames norm_names) {
  ValidateConfig(config);
  const std::string prefix = MegatronAttentionPrefix(layer);
  if (config.kind == AttentionKind::kMla) {
    for (const WeightSpec& spec : AttentionWeightSpecs(config)) {
      const MlaName& name = FindMlaName(spec.name);
      const char* megatron =
          norm_names == MegatronNormNames::kLocal ? name.local : name.transformer_engine;
      writer.AddF32(prefix + megatron, Get(weights, spec.name), dtype);
    }
    return;
  }
  auto fuse = [&](const std::string& suffix) {
    writer.AddF32(prefix + "linear_qkv." + suffix,
                  FuseGroupedQkv(Get(weights, "q_proj." + suffix), Get(weights, "k_proj." + suffix),
                                 Get(weights, "v_proj." + suffix), config.num_heads,
                                 config.gqa.num_kv_heads, config.gqa.head_dim),
                  dtype);
  };
  fuse("weight");
  if (config.gqa.qkv_bias) fuse("bias");
  writer.AddF32(prefix + "linear_proj.weight", Get(weights, "o_proj.weight"), dtype);
  if (config.gqa.o_bias)
    writer.AddF32(prefix + "linear_proj.bias", Get(weights, "o_proj.bias"), dtype);
}

std::string DetectWeightFormat(const SafetensorsFile& file, const ModelConfig& config,
                               int64_t layer) {
  const std::string megatron = MegatronAttentionPrefix(layer);
  const std::string hf = HfAttentionPrefix(config, layer);
  bool has_megatron = false;
  bool has_hf = false;
  for (const std::string& name : file.Names()) {
    has_megatron = has_megatron || name.rfind(megatron, 0) == 0;
    has_hf = has_hf || name.rfind(hf, 0) == 0;
  }
  Check(!(has_megatron && has_hf), ErrorKind::kInvalidArgument,
        file.path() + " holds layer " + std::to_string(layer) + " tensors under both '" + hf +
            "' and '" + megatron + "'");
  Check(has_megatron || has_hf, ErrorKind::kNotFound,
        "no tensor of layer " + std::to_string(layer) + " in " + file.path() + " (looked for '" +
            hf + "*' and '" + megatron + "*')");
  return has_megatron ? "megatron" : "hf";
}

NamedTensors ReadAttentionWeightsAnyFormat(const SafetensorsFile& file, const ModelConfig& config,
                                           int64_t layer) {
  return DetectWeightFormat(file, config, layer) == "megatron"
             ? ReadMegatronAttentionWeights(file, config, layer)
             : ReadHfAttentionWeights(file, config, layer);
}

NamedWeights LoadAttentionWeightsAnyFormat(const SafetensorsFile& file, const ModelConfig& config,
                                           int64_t layer) {
  return DetectWeightFormat(file, config, layer) == "megatron"
             ? ToNamedWeights(ReadMegatronAttentionWeights(file, config, layer))
             : LoadHfAttentionWeights(file, config, layer);
}

NamedWeights LoadAttentionWeightsAnyFormat(const Checkpoint& checkpoint, const ModelConfig& config,
                                           int64_t layer) {
  if (!checkpoint.sharded()) {
    return LoadAttentionWeightsAnyFormat(*checkpoint.Files().front(), config, layer);
  }
  return LoadHfAttentionWeights(checkpoint, config, layer);
}

}  // namespace attn
