// SPDX-License-Identifier: Apache-2.0
// What one attention layer is, independent of where its numbers came from.
// ModelConfig holds every value that changes attention math for a model; everything else
// in a checkpoint's config.json (vocabulary, MLP, MoE, dtype) is ignored by the parser.
// See docs/semantics.md §1-§3 for the formulas these feed.
#ifndef ATTN_CONFIG_H_
#define ATTN_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

namespace attn {

// How RoPE pairs the coordinates it rotates (docs/semantics.md §2). The checkpoint decides.
enum class RopePairing {
  kInterleaved,  // (x[2i], x[2i+1]): Meta reference, DeepSeek (HF rope_interleave=true)
  kRotateHalf,   // (x[i], x[i + r/2]): HF Llama, Mistral, Qwen2, GPT-NeoX
};

// kDynamic and kLongrope choose their frequencies per call, from the largest position the call
// rotates (docs/semantics.md §2): RotaryEmbedding::ForCall.
enum class RopeScalingType { kNone, kLinear, kLlama3, kYarn, kDynamic, kLongrope };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;  // longrope: the context ratio its default attention factor uses
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // llama3, yarn, dynamic and longrope: the pre-extension context length L.
  int64_t original_max_position_embeddings = 0;
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;            // 0 = absent
  double mscale_all_dim = 0.0;    // 0 = absent
  double attention_factor = 0.0;  // yarn, longrope; 0 = absent: derived (docs/semantics.md §2)
  bool truncate = true;           // floor/ceil the yarn correction range
  // longrope (Phi-3, MiniCPM3): per-frequency divisors, r/2 each; `short_factor` while the
  // call's sequence fits in L, `long_factor` beyond it.
  std::vector<double> short_factor;
  std::vector<double> long_factor;
};

struct RopeConfig {
  double theta = 10000.0;
  int64_t rotary_dim = 0;  // r: even, <= the width RoPE is applied to
  RopePairing pairing = RopePairing::kRotateHalf;
  RopeScaling scaling;
};

enum class AttentionKind {
  kGqa,  // MHA (G = H), GQA (1 < G < H), MQA (G = 1)
  kMla,  // DeepSeek-V2/V3 multi-head latent attention
};

// Fields of the GQA family (docs/semantics.md §1).
// RMSNorm on queries and keys before RoPE (docs/semantics.md §1, "q/k norms").
enum class QkNorm {
  kNone,
  kPerHead,          // Qwen3: q_norm/k_norm of width d, applied to every head's vector
  kWholeProjection,  // OLMo 2: q_norm of width H·d, k_norm of width G·d, before the head split
  kL2,  // Llama 4: weightless RMS normalisation of every q and k head, after RoPE, on RoPE layers
};

// Llama 4's attention temperature tuning on its NoPE layers: queries at cache slot p are scaled
// by ln(⌊(p + 1) / floor_scale⌋ + 1)·attn_scale + 1 (docs/semantics.md §1). floor_scale 0: none.
struct AttentionTemperature {
  double floor_scale = 0.0;
  double attn_scale = 0.0;
};

struct GqaDims {
  int64_t num_kv_heads = 0;  // G
  int64_t head_dim = 0;      // d (explicit head_dim, may differ from hidden / heads)
  bool qkv_bias = false;     // Qwen2; Llama attention_bias
  bool o_bias = false;       // Llama attention_bias
  QkNorm qk_norm = QkNorm::kNone;
  double qk_norm_eps = 1e-6;         // rms_norm_eps of the families with q/k norms
  bool qk_norm_unit_offset = false;  // Gemma 3: the norms scale by (1 + weight), not weight
  bool attention_sinks = false;      // GPT-OSS: a learned logit per head in the softmax denominator
  // Falcon's alibi: no RoPE; each score gains slope_h·(t − p)·scale with BLOOM's per-head slopes
  // (AlibiSlopes in attn/rope.h; docs/semantics.md §1).
  bool alibi = false;
};

// Fields of MLA (docs/semantics.md §3).
struct MlaDims {
  int64_t q_lora_rank = 0;       // rq; 0 = no query compression (V2-Lite)
  int64_t kv_lora_rank = 0;      // rk
  int64_t qk_nope_head_dim = 0;  // dn
  int64_t qk_rope_head_dim = 0;  // dr
  int64_t v_head_dim = 0;        // dv
  double rms_norm_eps = 1e-6;    // both latent RMSNorms
};

// How the checkpoint stores its projection weights beyond their dtype: HF quantization_config
// with quant_method "fp8" (DeepSeek-V3/R1, Kimi-K2): F8_E4M3 matrices, each with an F32
// `<name>_scale_inv` of one scale per block of block_rows × block_cols weights
// (docs/semantics.md §9). Absent from the config: no declared block size; an fp8 weight then
// gets DeepSeek's 128 × 128, which its scale tensor's shape must agree with.
struct WeightQuantization {
  bool fp8_blocks = false;  // quantization_config says fp8 with block scales
  int64_t block_rows = 128;
  int64_t block_cols = 128;
};

struct ModelConfig {
  std::string model_type;  // "llama", "mistral", "qwen2", "deepseek_v2", "deepseek_v3"
  AttentionKind kind = AttentionKind::kGqa;
  int64_t hidden_size = 0;  // D
  int64_t num_heads = 0;    // H
  int64_t num_layers = 1;
  int64_t max_position_embeddings = 0;
  GqaDims gqa;
  MlaDims mla;
  RopeConfig rope;
  // RoPE of the sliding-window layers when it differs from `rope` (Gemma 3: local layers rotate
  // with rope_local_base_freq and no scaling, global ones with rope_theta and rope_scaling).
  bool sliding_rope_differs = false;
  RopeConfig sliding_rope;
  WeightQuantization quantization;
  // An explicit softmax scale (Granite's attention_multiplier, Gemma's
  // query_pre_attn_scalar^-0.5); 0 = the one the dims imply.
  double softmax_scale = 0.0;
  // Logit soft-capping c (Gemma 2's attn_logit_softcapping): score ← c·tanh(score / c); 0 = none.
  double attn_logit_softcapping = 0.0;
  // Sliding window W (key t visible to query p iff p - W < t <= p); 0 = none.
  int64_t sliding_window = 0;
  // Which layers use the window: empty = all layers; otherwise one flag per layer
  // (Qwen2 use_sliding_window/max_window_layers, or an explicit layer_types list).
  std::vector<bool> sliding_layers;
  // Chunked (block-local) attention, Llama 4's attention_chunk_size C: a query at slot p sees
  // keys t <= p with t / C == p / C. 0 = none. chunked_layers: empty = all layers, else one flag
  // per layer.
  int64_t attention_chunk_size = 0;
  std::vector<bool> chunked_layers;
  // Layers without RoPE (Llama 4's NoPE layers): empty = every layer rotates.
  std::vector<bool> nope_layers;
  AttentionTemperature temperature;  // applied on NoPE layers only

  // Sliding window of layer `layer` (0 = none).
  int64_t WindowForLayer(int64_t layer) const;
  // Attention chunk of layer `layer` (0 = none).
  int64_t ChunkForLayer(int64_t layer) const;
  // Whether layer `layer` applies RoPE (false: a NoPE layer, or an ALiBi model).
  bool RotatesLayer(int64_t layer) const;
  // Width of one query/key head: d for GQA, dn + dr for MLA.
  int64_t QueryKeyHeadDim() const;
  // Width of one value head: d for GQA, dv for MLA.
  int64_t ValueHeadDim() const;
};

// Throws Error(kInvalidArgument) naming the first inconsistent value: non-positive sizes,
// H % G != 0, odd or too-wide rotary width, negative window, a scaling factor < 1 for yarn, …
void ValidateConfig(const ModelConfig& config);

// The softmax scale the config implies (docs/semantics.md §3):
//   softmax_scale when set (Granite's attention_multiplier), else
//   GQA: d^-0.5 (scaled by nothing else; YaRN's factor lives on cos/sin).
//   MLA: (dn + dr)^-0.5 · mscale(s, mscale_all_dim)^2 for yarn with mscale_all_dim != 0.
double SoftmaxScale(const ModelConfig& config);

// mscale(s, m) = 1 if s <= 1 else 0.1·m·ln(s) + 1   (docs/semantics.md §2).
double YarnMscale(double factor, double m);

}  // namespace attn

#endif  // ATTN_CONFIG_H_
