#include "attn/hf_weights.h"

#include "attn/error.h"

namespace attn {

std::string HfAttentionPrefix(int64_t layer) {
  return "model.layers." + std::to_string(layer) + ".self_attn.";
}

NamedTensors ReadHfAttentionWeights(const SafetensorsFile& file, const ModelConfig& config,
                                    int64_t layer) {
  const std::string prefix = HfAttentionPrefix(layer);
  NamedTensors weights;
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) {
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

}  // namespace attn
