// SPDX-License-Identifier: Apache-2.0
#include "attn/hf_weights.h"

#include <cstddef>
#include <functional>
#include <set>
#include <utility>
#include <vector>

#include "attn/error.h"
#include "attn/fused_qkv.h"

namespace attn {

std::string HfAttentionPrefix(int64_t layer) {
  return "model.layers." + std::to_string(layer) + ".self_attn.";
}

namespace {

bool IsFalcon(const ModelConfig& config) { return config.model_type == "falcon"; }

// Phi-3 keeps q, k and v stacked in one qkv_proj: rows [0, H·d) are q, then G·d rows of k, then
// G·d of v (Phi3Attention slices its output so); no biases.
bool HasStackedQkv(const ModelConfig& config) { return config.model_type == "phi3"; }

struct StackedRows {
  int64_t q_rows, kv_rows;
};
StackedRows StackedQkvRows(const ModelConfig& config) {
  return {config.num_heads * config.gqa.head_dim, config.gqa.num_kv_heads * config.gqa.head_dim};
}

// The short names (after `prefix`) a layer of this config reads from a checkpoint.
std::set<std::string> UsedNames(const ModelConfig& config) {
  if (IsFalcon(config)) {
    return {"query_key_value.weight", "query_key_value.bias", "dense.weight", "dense.bias"};
  }
  if (HasStackedQkv(config)) return {"qkv_proj.weight", "o_proj.weight"};
  std::set<std::string> used;
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) used.insert(spec.name);
  return used;
}

// Every tensor under the layer's attention prefix must be one the layer uses (an fp8 weight's
// `_scale_inv` counts with its weight), or kIgnoredTensor: a checkpoint of another family
// relabelled (a Qwen3 layer read as llama would silently drop its q/k norms) is an error naming
// the tensor, never a plausible wrong answer. The same rule as BuildAttentionLayer's for dicts.
void CheckNoUnusedTensors(const std::vector<std::string>& names, const ModelConfig& config,
                          int64_t layer, const std::string& where) {
  const std::string prefix = HfAttentionPrefix(config, layer);
  const std::set<std::string> used = UsedNames(config);
  for (const std::string& name : names) {
    if (!name.starts_with(prefix)) continue;
    std::string short_name = name.substr(prefix.size());
    if (short_name == kIgnoredTensor) continue;
    if (short_name.ends_with("_scale_inv")) {
      short_name.resize(short_name.size() - std::string("_scale_inv").size());
    }
    Check(used.contains(short_name), ErrorKind::kInvalidArgument,
          "tensor '" + name + "' in " + where + " is not part of a " + config.model_type +
              " attention layer (is the checkpoint another family than its config says?)");
  }
}

// Reads `name` as fp32 after checking it exists, has `shape` and holds finite values.
Tensor ReadChecked(const SafetensorsFile& file, const std::string& name, const Shape& shape) {
  Check(file.Contains(name), ErrorKind::kNotFound,
        "tensor '" + name + "' not found in " + file.path());
  Tensor tensor = file.ReadF32(name);
  CheckShape(tensor, shape, name);
  CheckFinite(tensor, name);
  return tensor;
}

// Falcon keeps q, k and v in one query_key_value projection (layout in fused_qkv.h) and calls
// o_proj `dense`; the layer itself keeps separate q/k/v/o.
NamedTensors ReadFalconAttentionWeights(const SafetensorsFile& file, const ModelConfig& config,
                                        int64_t layer) {
  const std::string prefix = HfAttentionPrefix(config, layer);
  const int64_t heads = config.num_heads;
  const int64_t kv_heads = config.gqa.num_kv_heads;
  const int64_t d = config.gqa.head_dim;
  const int64_t fused_rows = (heads + 2 * kv_heads) * d;
  NamedTensors weights;
  auto split = [&](const std::string& suffix, const Shape& shape) {
    const std::string name = prefix + "query_key_value." + suffix;
    QkvParts parts = SplitGroupedQkv(ReadChecked(file, name, shape), heads, kv_heads, d, name);
    weights.emplace("q_proj." + suffix, std::move(parts.q));
    weights.emplace("k_proj." + suffix, std::move(parts.k));
    weights.emplace("v_proj." + suffix, std::move(parts.v));
  };
  split("weight", {fused_rows, config.hidden_size});
  weights.emplace("o_proj.weight",
                  ReadChecked(file, prefix + "dense.weight", {config.hidden_size, heads * d}));
  if (config.gqa.qkv_bias) split("bias", {fused_rows});
  if (config.gqa.o_bias) {
    weights.emplace("o_proj.bias", ReadChecked(file, prefix + "dense.bias", {config.hidden_size}));
  }
  return weights;
}

// What the loaders below scan for NaN/Inf: every tensor, or the small ones only (biases, norm
// scales, sinks) for a caller that scans the slice of each matrix it keeps.
enum class FiniteScan { kAll, kVectorsOnly };

NamedWeights LoadStoredAttentionWeights(const TensorSource& find,
                                        const std::vector<std::string>& names,
                                        const std::string& where, const ModelConfig& config,
                                        int64_t layer, FiniteScan scan) {
  CheckNoUnusedTensors(names, config, layer, where);
  if (IsFalcon(config)) {
    // The fused projection is split row-wise in fp32 (fused_qkv.h), so Falcon's weights are
    // copies whatever their stored dtype.
    const SafetensorsFile* file = find(HfAttentionPrefix(config, layer) + "dense.weight");
    Check(file != nullptr, ErrorKind::kNotFound,
          "tensor '" + HfAttentionPrefix(config, layer) + "dense.weight' not found in " + where);
    return ToNamedWeights(ReadFalconAttentionWeights(*file, config, layer));
  }
  const std::string prefix = HfAttentionPrefix(layer);
  NamedWeights weights;
  if (HasStackedQkv(config)) {
    // Phi-3: q, k and v become row views of the stored qkv_proj (no copy, its own dtype); the
    // loop below then reads o_proj only.
    const std::string name = prefix + "qkv_proj.weight";
    const SafetensorsFile* file = find(name);
    Check(file != nullptr, ErrorKind::kNotFound, "tensor '" + name + "' not found in " + where);
    const Weight stacked = file->ReadWeight(name);
    const StackedRows rows = StackedQkvRows(config);
    const Shape expected = {rows.q_rows + 2 * rows.kv_rows, config.hidden_size};
    Check(stacked.shape() == expected, ErrorKind::kInvalidArgument,
          name + ": expected shape " + ShapeToString(expected) + " (q " +
              std::to_string(rows.q_rows) + " + k " + std::to_string(rows.kv_rows) + " + v " +
              std::to_string(rows.kv_rows) + " rows), got " + ShapeToString(stacked.shape()));
    Check(stacked.dtype() != DType::kF8E4M3, ErrorKind::kUnsupported,
          name + ": F8_E4M3 is read for DeepSeek's layout only, not a stacked qkv_proj");
    Check(find(name + "_scale_inv") == nullptr, ErrorKind::kInvalidArgument,
          name + " has block scales beside it (scales belong to F8_E4M3 weights)");
    if (scan == FiniteScan::kAll) CheckFinite(stacked, name);
    weights.emplace("q_proj.weight", stacked.RowSlice(0, rows.q_rows));
    weights.emplace("k_proj.weight", stacked.RowSlice(rows.q_rows, rows.kv_rows));
    weights.emplace("v_proj.weight", stacked.RowSlice(rows.q_rows + rows.kv_rows, rows.kv_rows));
  }
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) {
    if (weights.contains(spec.name)) continue;
    const std::string name = prefix + spec.name;
    const SafetensorsFile* file = find(name);
    Check(file != nullptr, ErrorKind::kNotFound, "tensor '" + name + "' not found in " + where);
    Weight weight = file->ReadWeight(name);
    Check(weight.shape() == spec.shape, ErrorKind::kInvalidArgument,
          name + ": expected shape " + ShapeToString(spec.shape) + ", got " +
              ShapeToString(weight.shape()));
    if (scan == FiniteScan::kAll || spec.kind != WeightSpec::Kind::kMatrix) {
      CheckFinite(weight, name);
    }
    const std::string scale_name = name + "_scale_inv";
    const SafetensorsFile* scale_file = find(scale_name);
    if (weight.dtype() != DType::kF8E4M3) {
      // Scales beside a wider weight mean the file is not what it claims (say, fp8 codes
      // widened to bf16 with their scales kept): using the weight unscaled would be silently
      // wrong, so refuse.
      Check(scale_file == nullptr, ErrorKind::kInvalidArgument,
            name + " is " + DTypeName(weight.dtype()) + " but has block scales '" + scale_name +
                "' beside it (scales belong to F8_E4M3 weights)");
    } else {
      // DeepSeek's layout: the F32 `<name>_scale_inv` holds one scale per block of the
      // config's weight_block_size (docs/semantics.md §9).
      Check(spec.kind == WeightSpec::Kind::kMatrix, ErrorKind::kInvalidArgument,
            name + ": F8_E4M3 is only read for projection matrices");
      Check(scale_file != nullptr, ErrorKind::kNotFound,
            "F8_E4M3 weight '" + name + "' has no block scales: tensor '" + scale_name +
                "' not found in " + where);
      weight = std::move(weight).WithBlockScales(scale_file->ReadWeight(scale_name),
                                                 config.quantization.block_rows,
                                                 config.quantization.block_cols, name);
    }
    weights.emplace(spec.name, std::move(weight));
  }
  return weights;
}

}  // namespace

NamedWeights LoadHfAttentionWeights(const TensorSource& find, const std::vector<std::string>& names,
                                    const std::string& where, const ModelConfig& config,
                                    int64_t layer) {
  return LoadStoredAttentionWeights(find, names, where, config, layer, FiniteScan::kAll);
}

NamedWeights LoadHfAttentionWeightsUnscanned(const Checkpoint& checkpoint,
                                             const ModelConfig& config, int64_t layer) {
  return LoadStoredAttentionWeights(
      [&checkpoint](const std::string& name) {
        return checkpoint.Contains(name) ? &checkpoint.FileFor(name) : nullptr;
      },
      checkpoint.Names(), checkpoint.path(), config, layer, FiniteScan::kVectorsOnly);
}

NamedTensors UnfuseAttentionTensors(const ModelConfig& config, NamedTensors tensors) {
  auto take = [&](const std::string& fused, const std::string& split) {
    Check(!tensors.contains(split), ErrorKind::kInvalidArgument,
          "weights: '" + split + "' given beside the fused '" + fused + "' it is part of");
    auto node = tensors.extract(fused);
    return std::move(node.mapped());
  };
  auto put = [&](const std::string& name, Tensor tensor) {
    Check(!tensors.contains(name), ErrorKind::kInvalidArgument,
          "weights: '" + name + "' given beside the fused tensor it is part of");
    tensors.emplace(name, std::move(tensor));
  };
  if (IsFalcon(config)) {
    for (const std::string suffix : {"weight", "bias"}) {
      const std::string fused = "query_key_value." + suffix;
      if (tensors.contains(fused)) {
        QkvParts parts = SplitGroupedQkv(take(fused, "q_proj." + suffix), config.num_heads,
                                         config.gqa.num_kv_heads, config.gqa.head_dim, fused);
        put("q_proj." + suffix, std::move(parts.q));
        put("k_proj." + suffix, std::move(parts.k));
        put("v_proj." + suffix, std::move(parts.v));
      }
      if (tensors.contains("dense." + suffix)) {
        put("o_proj." + suffix, take("dense." + suffix, "o_proj." + suffix));
      }
    }
  }
  if (HasStackedQkv(config) && tensors.contains("qkv_proj.weight")) {
    const Tensor stacked = take("qkv_proj.weight", "q_proj.weight");
    const StackedRows rows = StackedQkvRows(config);
    const int64_t in = stacked.shape().size() == 2 ? stacked.shape()[1] : 0;
    const Shape expected = {rows.q_rows + 2 * rows.kv_rows, config.hidden_size};
    Check(stacked.shape() == expected, ErrorKind::kInvalidArgument,
          "qkv_proj.weight: expected shape " + ShapeToString(expected) + ", got " +
              ShapeToString(stacked.shape()));
    auto slice = [&](int64_t first, int64_t count) {
      Tensor part({count, in});
      std::copy_n(stacked.data() + first * in, count * in, part.data());
      return part;
    };
    put("q_proj.weight", slice(0, rows.q_rows));
    put("k_proj.weight", slice(rows.q_rows, rows.kv_rows));
    put("v_proj.weight", slice(rows.q_rows + rows.kv_rows, rows.kv_rows));
  }
  return tensors;
}

NamedWeights LoadHfAttentionWeights(const SafetensorsFile& file, const ModelConfig& config,
                                    int64_t layer) {
  return LoadHfAttentionWeights(
      [&file](const std::string& name) { return file.Contains(name) ? &file : nullptr; },
      file.Names(), file.path(), config, layer);
}

NamedWeights LoadHfAttentionWeights(const Checkpoint& checkpoint, const ModelConfig& config,
                                    int64_t layer) {
  return LoadHfAttentionWeights(
      [&checkpoint](const std::string& name) {
        return checkpoint.Contains(name) ? &checkpoint.FileFor(name) : nullptr;
      },
      checkpoint.Names(), checkpoint.path(), config, layer);
}

std::string HfAttentionPrefix(const ModelConfig& config, int64_t layer) {
  if (IsFalcon(config)) return "transformer.h." + std::to_string(layer) + ".self_attention.";
  return HfAttentionPrefix(layer);
}

NamedTensors ReadHfAttentionWeights(const SafetensorsFile& file, const ModelConfig& config,
                                    int64_t layer) {
  CheckNoUnusedTensors(file.Names(), config, layer, file.path());
  if (IsFalcon(config)) return ReadFalconAttentionWeights(file, config, layer);
  const std::string prefix = HfAttentionPrefix(layer);
  NamedTensors weights;
  if (HasStackedQkv(config)) {
    const StackedRows rows = StackedQkvRows(config);
    const Tensor stacked = ReadChecked(file, prefix + "qkv_proj.weight",
                                       {rows.q_rows + 2 * rows.kv_rows, config.hidden_size});
    const int64_t in = config.hidden_size;
    auto rows_of = [&](int64_t first, int64_t count) {
      const float* begin = stacked.data() + first * in;
      return Tensor({count, in}, std::vector<float>(begin, begin + count * in));
    };
    weights.emplace("q_proj.weight", rows_of(0, rows.q_rows));
    weights.emplace("k_proj.weight", rows_of(rows.q_rows, rows.kv_rows));
    weights.emplace("v_proj.weight", rows_of(rows.q_rows + rows.kv_rows, rows.kv_rows));
  }
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) {
    if (weights.contains(spec.name)) continue;
    const std::string name = prefix + spec.name;
    Check(file.Contains(name), ErrorKind::kNotFound,
          "tensor '" + name + "' not found in " + file.path());
    Tensor tensor = file.ReadF32(name);
    CheckShape(tensor, spec.shape, name);
    CheckFinite(tensor, name);
    weights.emplace(spec.name, std::move(tensor));
  }
  return weights;
}

void AddHfAttentionWeights(SafetensorsWriter& writer, const NamedTensors& weights, int64_t layer,
                           DType dtype) {
  const std::string prefix = HfAttentionPrefix(layer);
  for (const auto& [name, tensor] : weights) writer.AddF32(prefix + name, tensor, dtype);
}

// DeepSeek's fp8 layout: each projection matrix as F8_E4M3 with its F32 `<name>_scale_inv`
// (blocks of the config's weight_block_size), the norm scales (and any bias) in BF16.
void AddFp8AttentionWeights(SafetensorsWriter& writer, const ModelConfig& config,
                            const NamedTensors& weights, int64_t layer) {
  const std::string prefix = HfAttentionPrefix(layer);
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) {
    auto it = weights.find(spec.name);
    Check(it != weights.end(), ErrorKind::kNotFound,
          "missing attention weight '" + spec.name + "'");
    const std::string name = prefix + spec.name;
    if (spec.kind != WeightSpec::Kind::kMatrix) {
      writer.AddF32(name, it->second, DType::kBF16);
      continue;
    }
    const Weight fp8 = QuantizeF8E4M3Blocks(it->second, config.quantization.block_rows,
                                            config.quantization.block_cols);
    const auto* codes = static_cast<const std::byte*>(fp8.data());
    writer.AddBytes(name, DType::kF8E4M3, fp8.shape(),
                    std::vector<std::byte>(codes, codes + fp8.size()));
    const Shape scale_shape = fp8.block_scale_shape();
    writer.AddF32(
        name + "_scale_inv",
        Tensor(scale_shape, std::vector<float>(fp8.block_scales(),
                                               fp8.block_scales() + NumElements(scale_shape))));
  }
}

void AddHfAttentionWeights(SafetensorsWriter& writer, const ModelConfig& config,
                           const NamedTensors& weights, int64_t layer, DType dtype) {
  if (dtype == DType::kF8E4M3) {
    Check(!IsFalcon(config) && !HasStackedQkv(config), ErrorKind::kUnsupported,
          "fp8 weights are written in DeepSeek's layout under HF llama/deepseek names, not for " +
              config.model_type + "'s fused q/k/v projection");
    AddFp8AttentionWeights(writer, config, weights, layer);
    return;
  }
  const std::string prefix = HfAttentionPrefix(config, layer);
  auto get = [&](const std::string& name) -> const Tensor& {
    auto it = weights.find(name);
    Check(it != weights.end(), ErrorKind::kNotFound, "missing attention weight '" + name + "'");
    return it->second;
  };
  if (HasStackedQkv(config)) {
    // Phi-3's qkv_proj: the q, k and v rows one after another.
    std::vector<float> stacked;
    for (const char* part : {"q_proj.weight", "k_proj.weight", "v_proj.weight"}) {
      const Tensor& rows = get(part);
      stacked.insert(stacked.end(), rows.data(), rows.data() + rows.size());
    }
    const int64_t in = config.hidden_size;
    const auto count = static_cast<int64_t>(stacked.size()) / in;
    writer.AddF32(prefix + "qkv_proj.weight", Tensor({count, in}, std::move(stacked)), dtype);
    writer.AddF32(prefix + "o_proj.weight", get("o_proj.weight"), dtype);
    return;
  }
  if (!IsFalcon(config)) {
    AddHfAttentionWeights(writer, weights, layer, dtype);
    return;
  }
  auto fuse = [&](const std::string& suffix) {
    writer.AddF32(
        prefix + "query_key_value." + suffix,
        FuseGroupedQkv(get("q_proj." + suffix), get("k_proj." + suffix), get("v_proj." + suffix),
                       config.num_heads, config.gqa.num_kv_heads, config.gqa.head_dim),
        dtype);
  };
  fuse("weight");
  writer.AddF32(prefix + "dense.weight", get("o_proj.weight"), dtype);
  if (config.gqa.qkv_bias) fuse("bias");
  if (config.gqa.o_bias) writer.AddF32(prefix + "dense.bias", get("o_proj.bias"), dtype);
}

}  // namespace attn
