// SPDX-License-Identifier: Apache-2.0
// Megatron-Core names for one attention layer (docs/semantics.md §5):
// its config/argument names and its tensor names, both ways, and format detection.
//
// Tensors, prefix "decoder.layers.{i}.self_attention.":
//   MLA  linear_q_proj                 <-> q_proj            (q_lora_rank = 0)
//        linear_q_down_proj            <-> q_a_proj
//        q_layernorm | linear_q_up_proj.layer_norm_weight (Transformer Engine)
//                                      <-> q_a_layernorm
//        linear_q_up_proj              <-> q_b_proj
//        linear_kv_down_proj           <-> kv_a_proj_with_mqa
//        kv_layernorm | linear_kv_up_proj.layer_norm_weight
//                                      <-> kv_a_layernorm
//        linear_kv_up_proj             <-> kv_b_proj
//        linear_proj                   <-> o_proj
//   All MLA tensors map one to one (same row order, no permutation).
//   GQA  linear_qkv (.weight, .bias)   <-> q/k/v_proj fused per kv group (fused_qkv.h)
//        linear_proj (.weight, .bias)  <-> o_proj
#ifndef ATTN_MEGATRON_H_
#define ATTN_MEGATRON_H_

#include <cstdint>
#include <optional>
#include <string>

#include "attn/checkpoint.h"
#include "attn/config.h"
#include "attn/layer_weights.h"
#include "attn/safetensors.h"

namespace attn {

// What a Megatron-style config says beyond ModelConfig: the values a framework would compute
// the softmax scale from (check-scale compares them with the math).
struct MegatronExtras {
  std::optional<int64_t> kv_channels;   // explicit kv_channels (default hidden / heads)
  std::optional<double> softmax_scale;  // explicit softmax_scale override
};

// A config read from a file, a preset, or text, whichever naming it used.
struct LoadedConfig {
  ModelConfig config;
  std::string format;  // "hf" or "megatron"
  std::string source;  // path, "preset NAME" or "config.json"
  MegatronExtras megatron;
};

// Megatron-Core TransformerConfig / MLATransformerConfig names (JSON object) -> ModelConfig.
// Keys: num_layers, hidden_size, num_attention_heads, num_query_groups, kv_channels,
// add_qkv_bias, add_bias_linear, multi_latent_attention, q_lora_rank, kv_lora_rank,
// qk_head_dim, qk_pos_emb_head_dim, v_head_dim, layernorm_epsilon (or norm_epsilon),
// position_embedding_type / rope_type (rope | yarn | none), rotary_base, rotary_percent,
// rotary_interleaved, rotary_scaling_factor, original_max_position_embeddings, beta_fast,
// beta_slow, mscale, mscale_all_dim, max_position_embeddings (or seq_length), softmax_scale.
// Throws like ParseHfConfig, naming the Megatron key at fault.
LoadedConfig ParseMegatronConfig(const std::string& json_text, const std::string& source);

// Reads a config file in either naming: a "model_type" key means Hugging Face, otherwise
// Megatron-Core names.
LoadedConfig LoadAnyConfig(const std::string& path);

// The config under the other framework's names, as JSON text (two-space indented).
// Throws Error(kUnsupported) for what the target naming cannot express (e.g. a sliding window
// in Megatron names, interleaved RoPE on a GQA model in HF llama names).
std::string MegatronConfigJson(const ModelConfig& config);
std::string HfConfigJson(const ModelConfig& config);
// Writes HfConfigJson(config) to `path` atomically (a temporary beside it, renamed into place).
void WriteHfConfigFile(const std::string& path, const ModelConfig& config);

std::string MegatronAttentionPrefix(int64_t layer);

// Reads layer `layer`'s tensors under Megatron-Core names, returned under the short HF names
// of layer_weights.h. Norm scales may use either spelling (both present is an error).
// Throws Error(kNotFound) naming every spelling of a missing tensor, Error(kInvalidArgument)
// naming a misshapen one.
NamedTensors ReadMegatronAttentionWeights(const SafetensorsFile& file, const ModelConfig& config,
                                          int64_t layer);

// How Megatron spells the two MLA latent norms.
enum class MegatronNormNames {
  kTransformerEngine,  // linear_q_up_proj.layer_norm_weight (fused into the TE linear)
  kLocal,              // q_layernorm.weight, kv_layernorm.weight
};

// Adds `weights` (short HF names) under layer `layer`'s Megatron-Core names.
void AddMegatronAttentionWeights(
    SafetensorsWriter& writer, const ModelConfig& config, const NamedTensors& weights,
    int64_t layer, DType dtype,
    MegatronNormNames norm_names = MegatronNormNames::kTransformerEngine);

// "megatron" when the file holds Megatron-Core attention tensors for `layer`, "hf" when it
// holds HF ones, else Error(kNotFound) naming both prefixes.
std::string DetectWeightFormat(const SafetensorsFile& file, const ModelConfig& config,
                               int64_t layer);

// Reads the layer's weights in whichever naming the file uses, as fp32.
NamedTensors ReadAttentionWeightsAnyFormat(const SafetensorsFile& file, const ModelConfig& config,
                                           int64_t layer);
// The same for running a layer: HF weights in their stored dtypes (LoadHfAttentionWeights),
// Megatron-Core ones as fp32 (their fused tensors are split into copies).
NamedWeights LoadAttentionWeightsAnyFormat(const SafetensorsFile& file, const ModelConfig& config,
                                           int64_t layer);
// From a checkpoint: a single file in either naming, shards (always HF) through their index.
NamedWeights LoadAttentionWeightsAnyFormat(const Checkpoint& checkpoint, const ModelConfig& config,
                                           int64_t layer);

}  // namespace attn

#endif  // ATTN_MEGATRON_H_
