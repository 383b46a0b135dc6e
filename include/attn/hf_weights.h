// SPDX-License-Identifier: Apache-2.0
// One attention layer's tensors under Hugging Face names: "model.layers.{i}.self_attn." +
// the short names of layer_weights.h (Falcon: "transformer.h.{i}.self_attention." + its fused
// query_key_value and dense).
#ifndef ATTN_HF_WEIGHTS_H_
#define ATTN_HF_WEIGHTS_H_

#include <cstdint>
#include <string>

#include "attn/layer_weights.h"
#include "attn/safetensors.h"

namespace attn {

std::string HfAttentionPrefix(int64_t layer);
// The family's prefix: "transformer.h.{i}.self_attention." for Falcon, else the one above.
std::string HfAttentionPrefix(const ModelConfig& config, int64_t layer);

// Reads layer `layer`'s attention tensors (any float dtype, converted to fp32). Falcon's fused
// query_key_value is split into q/k/v_proj and its dense read as o_proj. Throws
// Error(kNotFound) naming the full tensor name and the file when one is missing, and
// Error(kInvalidArgument) naming it when its shape is wrong.
NamedTensors ReadHfAttentionWeights(const SafetensorsFile& file, const ModelConfig& config,
                                    int64_t layer);

// Adds `weights` (short names) to `writer` under layer `layer`'s HF names.
void AddHfAttentionWeights(SafetensorsWriter& writer, const NamedTensors& weights, int64_t layer,
                           DType dtype = DType::kF32);
// The same under the config's family names: for Falcon, q/k/v_proj are fused into
// query_key_value and o_proj written as dense (layout in fused_qkv.h).
void AddHfAttentionWeights(SafetensorsWriter& writer, const ModelConfig& config,
                           const NamedTensors& weights, int64_t layer, DType dtype = DType::kF32);

}  // namespace attn

#endif  // ATTN_HF_WEIGHTS_H_
