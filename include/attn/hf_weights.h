// SPDX-License-Identifier: Apache-2.0
// One attention layer's tensors under Hugging Face names: "model.layers.{i}.self_attn." +
// the short names of layer_weights.h (Falcon: "transformer.h.{i}.self_attention." + its fused
// query_key_value and dense).
#ifndef ATTN_HF_WEIGHTS_H_
#define ATTN_HF_WEIGHTS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "attn/checkpoint.h"
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

// The file that holds a tensor, or null: one file, or the shards of a checkpoint.
using TensorSource = std::function<const SafetensorsFile*(const std::string& name)>;

// Layer `layer`'s attention weights in their stored dtypes, memory-mapped (no copy): F32, BF16,
// F16, or F8_E4M3 with the block scales of its `<name>_scale_inv` tensor and the config's
// quantization block size. Biases and norm scales are read in any float dtype. Falcon's fused
// projection is split into fp32 copies. Throws Error(kNotFound) naming a missing tensor (an fp8
// weight's scales included) and `where`, Error(kInvalidArgument) naming a misshapen,
// non-finite or wrongly typed one; nothing is kept from a failed load.
// `names`: every tensor the source holds; one under the layer's prefix that the layer does not
// use (kIgnoredTensor aside) is Error(kInvalidArgument) naming it.
NamedWeights LoadHfAttentionWeights(const TensorSource& find, const std::vector<std::string>& names,
                                    const std::string& where, const ModelConfig& config,
                                    int64_t layer);
NamedWeights LoadHfAttentionWeights(const SafetensorsFile& file, const ModelConfig& config,
                                    int64_t layer);
// From a sharded checkpoint: each tensor from the shard its index names.
NamedWeights LoadHfAttentionWeights(const Checkpoint& checkpoint, const ModelConfig& config,
                                    int64_t layer);
// LoadHfAttentionWeights(checkpoint, …) without the NaN/Inf scan of the projection matrices
// (names, shapes, dtypes, block scales and the small vectors are still checked): for a loader
// that keeps a slice of each matrix and scans only that (LoadAttentionWeightShard in
// attn/parallel.h), so that no rank reads the pages of another rank's rows. The caller must run
// CheckFinite on every matrix it keeps. Falcon's fused projection is read (and scanned) whole.
NamedWeights LoadHfAttentionWeightsUnscanned(const Checkpoint& checkpoint,
                                             const ModelConfig& config, int64_t layer);

// A layer's tensors under their short checkpoint names (after HfAttentionPrefix(config,
// layer)), with the family's fused projections split into the names the layer reads: Falcon's
// query_key_value.{weight,bias} into q/k/v_proj (fused_qkv.h) and dense.* into o_proj.*, Phi-3's
// stacked qkv_proj.weight into q/k/v_proj rows. Already split names pass through. Throws
// Error(kInvalidArgument) naming a fused tensor of the wrong row count, or one given both fused
// and split.
NamedTensors UnfuseAttentionTensors(const ModelConfig& config, NamedTensors tensors);

// Adds `weights` (short names) to `writer` under layer `layer`'s HF names.
void AddHfAttentionWeights(SafetensorsWriter& writer, const NamedTensors& weights, int64_t layer,
                           DType dtype = DType::kF32);
// The same under the config's family names: for Falcon, q/k/v_proj are fused into
// query_key_value and o_proj written as dense (layout in fused_qkv.h). dtype F8_E4M3 writes
// DeepSeek's fp8 layout: matrices quantized per block of the config's quantization block size
// (QuantizeF8E4M3Blocks) with their F32 `<name>_scale_inv`, vectors in BF16 (not for Falcon).
void AddHfAttentionWeights(SafetensorsWriter& writer, const ModelConfig& config,
                           const NamedTensors& weights, int64_t layer, DType dtype = DType::kF32);

}  // namespace attn

#endif  // ATTN_HF_WEIGHTS_H_
