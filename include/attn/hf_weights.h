// One attention layer's tensors under Hugging Face names: "model.layers.{i}.self_attn." +
// the short names of layer_weights.h.
#ifndef ATTN_HF_WEIGHTS_H_
#define ATTN_HF_WEIGHTS_H_

#include <cstdint>
#include <string>

#include "attn/layer_weights.h"
#include "attn/safetensors.h"

namespace attn {

std::string HfAttentionPrefix(int64_t layer);

// Reads layer `layer`'s attention tensors (any float dtype, converted to fp32). Throws
// Error(kNotFound) naming the full tensor name and the file when one is missing, and
// Error(kInvalidArgument) naming it when its shape is wrong.
NamedTensors ReadHfAttentionWeights(const SafetensorsFile& file, const ModelConfig& config,
                                    int64_t layer);

// Adds `weights` (short names) to `writer` under layer `layer`'s HF names.
void AddHfAttentionWeights(SafetensorsWriter& writer, const NamedTensors& weights, int64_t layer,
                           DType dtype = DType::kF32);

}  // namespace attn

#endif  // ATTN_HF_WEIGHTS_H_
