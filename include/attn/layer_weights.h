// SPDX-License-Identifier: Apache-2.0
// The tensors an attention layer needs, by the short names checkpoints use under
// "model.layers.{i}.self_attn." (q_proj.weight, kv_b_proj.weight, …), and turning a set of
// them into a layer. File formats and name prefixes live in io/ (hf_weights.h).
#ifndef ATTN_LAYER_WEIGHTS_H_
#define ATTN_LAYER_WEIGHTS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "attn/config.h"
#include "attn/layer.h"
#include "attn/tensor.h"
#include "attn/weight.h"

namespace attn {

using NamedTensors = std::map<std::string, Tensor>;
// The same in their stored dtypes (attn/weight.h): what a checkpoint loader hands a layer.
using NamedWeights = std::map<std::string, Weight>;

struct WeightSpec {
  enum class Kind {
    kMatrix,     // Linear weight [out, in]
    kBias,       // Linear bias [out]
    kNormScale,  // RMSNorm weight
    kSink,       // attention-sink logits, one per query head (GPT-OSS `sinks`)
  };
  std::string name;  // short name, e.g. "q_proj.weight"
  Shape shape;
  Kind kind;
};

// Every tensor the config's attention layer has, with its shape (docs/semantics.md §5).
std::vector<WeightSpec> AttentionWeightSpecs(const ModelConfig& config);

// The one tensor a checkpoint may hold under a layer's attention prefix that the layer does not
// use: older Llama checkpoints saved RoPE's derived inverse frequencies (`rotary_emb.inv_freq`).
// Any other unused tensor is an error on every loading path (a Qwen3 checkpoint labelled llama
// would otherwise silently lose its q/k norms).
extern const char* const kIgnoredTensor;

// Builds the layer from `weights` (short names; consumed). Throws Error(kNotFound) naming a
// missing tensor, Error(kInvalidArgument) naming a misshapen or unexpected one.
// Projection matrices are kept as stored (F32, BF16, F16, or F8_E4M3 with block scales: an fp8
// one without them is refused); biases and norm scales are kept in fp32.
std::unique_ptr<AttentionLayer> BuildAttentionLayer(const ModelConfig& config, int64_t layer,
                                                    NamedWeights weights);
// The same from fp32 tensors (moved, not copied).
std::unique_ptr<AttentionLayer> BuildAttentionLayer(const ModelConfig& config, int64_t layer,
                                                    NamedTensors weights);
NamedWeights ToNamedWeights(NamedTensors tensors);
// `weights` with every projection matrix held as `dtype` in memory, as a checkpoint of that
// dtype stores it: F32 as given, BF16/F16 rounded to nearest even, F8_E4M3 quantized per block of
// the config's quantization block size (QuantizeF8E4M3Blocks). Biases and norm scales stay fp32.
// For benchmarks and tests of reduced-precision weights without a file.
NamedWeights StoreAttentionWeights(const ModelConfig& config, NamedTensors weights, DType dtype);

// Deterministic random weights for `config`: matrices uniform in ±1/sqrt(in) (PyTorch's
// Linear init), biases in ±0.1, norm scales in 1 ± 0.25 so that norms are exercised, sink
// logits in ±2.
NamedTensors RandomAttentionWeights(const ModelConfig& config, uint64_t seed);

// A tensor of values uniform in [-bound, bound), deterministic in `seed` (test inputs, demos).
Tensor RandomUniform(const Shape& shape, uint64_t seed, float bound);

}  // namespace attn

#endif  // ATTN_LAYER_WEIGHTS_H_
