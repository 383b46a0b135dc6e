// SPDX-License-Identifier: Apache-2.0
// Presets against the table of real models in docs/semantics.md §6
// and against the public config.json files kept in configs/.
#include "attn/presets.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "attn/error.h"
#include "attn/hf_config.h"
#include "attn/kv_cache.h"
#include "attn/layer_weights.h"
#include "attn/model_stats.h"
#include "test_util.h"

#ifndef ATTN_SOURCE_DIR
#error "ATTN_SOURCE_DIR must name the repository root"
#endif

namespace attn {
namespace {

struct Row {
  const char* preset;
  int64_t hidden, heads, kv_heads, head_dim, layers, kv_values;
};

// §6: D, H, G, d, layers, KV values per token per layer (latent form for MLA).
constexpr Row kTable[] = {
    {"llama-2-7b", 4096, 32, 32, 128, 32, 8192},
    {"llama-3-8b", 4096, 32, 8, 128, 32, 2048},
    {"llama-3.1-8b", 4096, 32, 8, 128, 32, 2048},
    {"llama-3-70b", 8192, 64, 8, 128, 80, 2048},
    {"mistral-7b-v0.1", 4096, 32, 8, 128, 32, 2048},
    {"qwen2.5-7b", 3584, 28, 4, 128, 28, 1024},
    {"falcon-7b", 4544, 71, 1, 64, 32, 128},
    {"deepseek-v2-lite", 2048, 16, 0, 0, 27, 576},
    {"deepseek-v2", 5120, 128, 0, 0, 60, 576},
    {"deepseek-v3", 7168, 128, 0, 0, 61, 576},
    {"kimi-k2", 7168, 64, 0, 0, 61, 576},
    {"qwen3-8b", 4096, 32, 8, 128, 36, 2048},
    {"qwen3-30b-a3b", 2048, 32, 4, 128, 48, 1024},
    {"gpt-oss-20b", 2880, 64, 8, 64, 24, 1024},
    {"phi-3.5-mini", 3072, 32, 32, 96, 32, 6144},
    // Mixtral-8x7B: 4096 / 32 heads = 128; K and V of 8 kv heads: 2 * 8 * 128 = 2048.
    {"mixtral-8x7b", 4096, 32, 8, 128, 32, 2048},
    // Gemma-2-2B: head_dim 256 given (not 2304 / 8 = 288); 2 * 4 * 256 = 2048.
    {"gemma-2-2b", 2304, 8, 4, 256, 26, 2048},
    // OLMo-2-1124-7B: MHA, 4096 / 32 = 128; 2 * 32 * 128 = 8192.
    {"olmo-2-7b", 4096, 32, 32, 128, 32, 8192},
    // Granite-3.3-8B: 4096 / 32 = 128; 2 * 8 * 128 = 2048.
    {"granite-3.3-8b", 4096, 32, 8, 128, 40, 2048},
    // Qwen1.5-MoE-A2.7B: MHA, 2048 / 16 = 128; 2 * 16 * 128 = 4096.
    {"qwen1.5-moe-a2.7b-chat", 2048, 16, 16, 128, 24, 4096},
    // Gemma-3-270M: MQA, head_dim 256 given (640 / 4 = 160 is not it); 2 * 1 * 256 = 512.
    {"gemma-3-270m", 640, 4, 1, 256, 18, 512},
    // GLM-4-9B-Chat (HF format): head_dim 128 given; 2 kv heads: 2 * 2 * 128 = 512.
    {"glm-4-9b-chat-hf", 4096, 32, 2, 128, 40, 512},
    // Falcon-RW-1B: MHA (multi_query false), 2048 / 32 = 64; 2 * 32 * 64 = 4096.
    {"falcon-rw-1b", 2048, 32, 32, 64, 24, 4096},
    // GLM-4-9B-0414: the 9B geometry of GLM-4-9B-Chat; 2 * 2 * 128 = 512.
    {"glm-4-9b-0414", 4096, 32, 2, 128, 40, 512},
    // Llama-4-Scout-17B-16E: 5120 / 40 = 128, 8 kv heads: 2 * 8 * 128 = 2048.
    {"llama-4-scout-17b-16e", 5120, 40, 8, 128, 48, 2048},
    // MiniCPM3-4B: MLA latent row kv_lora_rank 256 + qk_rope_head_dim 32 = 288.
    {"minicpm3-4b", 2560, 40, 0, 0, 62, 288},
};

// RoPE pairs neighbouring coordinates for GLM's and Llama 4's GQA layers (docs/semantics.md §2);
// the other GQA rows rotate halves.
bool PairsNeighbours(const ModelConfig& c) {
  return c.model_type == "glm" || c.model_type == "glm4" || c.model_type == "llama4_text";
}

// The presets taken from vendored copies of published config.json files equal parsing those
// files (configs/), so a typo in either shows.
TEST(PresetsTest, PresetsEqualTheirVendoredConfigFiles) {
  for (const auto& [preset, file] :
       {std::pair<const char*, const char*>{"qwen3-8b", "qwen3-8b.json"},
        {"qwen3-30b-a3b", "qwen3-30b-a3b.json"},
        {"gpt-oss-20b", "gpt-oss-20b.json"},
        {"phi-3.5-mini", "phi-3.5-mini-instruct.json"},
        {"mixtral-8x7b", "mixtral-8x7b-v0.1.json"},
        {"gemma-2-2b", "gemma-2-2b-it.json"},
        {"olmo-2-7b", "olmo-2-1124-7b.json"},
        {"granite-3.3-8b", "granite-3.3-8b-instruct.json"},
        {"gemma-3-270m", "gemma-3-270m.json"},
        {"glm-4-9b-chat-hf", "glm-4-9b-chat-hf.json"},
        {"falcon-rw-1b", "falcon-rw-1b.json"}}) {
    SCOPED_TRACE(preset);
    const ModelConfig a = LoadPreset(preset);
    const ModelConfig b = LoadHfConfig(std::string(ATTN_SOURCE_DIR "/configs/") + file);
    EXPECT_EQ(a.model_type, b.model_type);
    EXPECT_EQ(a.hidden_size, b.hidden_size);
    EXPECT_EQ(a.num_heads, b.num_heads);
    EXPECT_EQ(a.num_layers, b.num_layers);
    EXPECT_EQ(a.gqa.num_kv_heads, b.gqa.num_kv_heads);
    EXPECT_EQ(a.gqa.head_dim, b.gqa.head_dim);
    EXPECT_EQ(a.gqa.qk_norm, b.gqa.qk_norm);
    EXPECT_EQ(a.gqa.qk_norm_eps, b.gqa.qk_norm_eps);
    EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
    EXPECT_EQ(a.rope.theta, b.rope.theta);
    EXPECT_EQ(a.sliding_window, b.sliding_window);
    EXPECT_EQ(a.sliding_layers, b.sliding_layers);
    EXPECT_EQ(a.gqa.attention_sinks, b.gqa.attention_sinks);
    EXPECT_EQ(a.gqa.qkv_bias, b.gqa.qkv_bias);
    EXPECT_EQ(a.gqa.o_bias, b.gqa.o_bias);
    EXPECT_EQ(a.gqa.alibi, b.gqa.alibi);
    EXPECT_EQ(a.rope.rotary_dim, b.rope.rotary_dim);
    EXPECT_EQ(a.rope.pairing, b.rope.pairing);
    EXPECT_EQ(a.rope.scaling.type, b.rope.scaling.type);
    EXPECT_EQ(a.rope.scaling.factor, b.rope.scaling.factor);
    EXPECT_EQ(a.rope.scaling.truncate, b.rope.scaling.truncate);
    EXPECT_EQ(a.rope.scaling.original_max_position_embeddings,
              b.rope.scaling.original_max_position_embeddings);
    EXPECT_EQ(a.rope.scaling.short_factor, b.rope.scaling.short_factor);
    EXPECT_EQ(a.rope.scaling.long_factor, b.rope.scaling.long_factor);
    EXPECT_EQ(a.attn_logit_softcapping, b.attn_logit_softcapping);
    EXPECT_EQ(SoftmaxScale(a), SoftmaxScale(b));
  }
}

TEST(PresetsTest, EveryPresetMatchesTheReferenceTable) {
  ASSERT_EQ(PresetNames().size(), std::size(kTable));
  for (const Row& row : kTable) {
    SCOPED_TRACE(row.preset);
    const ModelConfig c = LoadPreset(row.preset);
    EXPECT_EQ(c.hidden_size, row.hidden);
    EXPECT_EQ(c.num_heads, row.heads);
    EXPECT_EQ(c.num_layers, row.layers);
    const bool mla = row.kv_heads == 0;
    EXPECT_EQ(c.kind, mla ? AttentionKind::kMla : AttentionKind::kGqa);
    if (mla && c.model_type == "minicpm3") {
      EXPECT_EQ(c.mla.kv_lora_rank, 256);
      EXPECT_EQ(c.mla.qk_nope_head_dim, 64);
      EXPECT_EQ(c.mla.qk_rope_head_dim, 32);
      EXPECT_EQ(c.mla.v_head_dim, 64);  // hidden_size / num_attention_heads
      EXPECT_EQ(c.rope.pairing, RopePairing::kRotateHalf);
      EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kLongrope);
      EXPECT_EQ(CacheValuesPerToken(c, CacheForm::kLatent), row.kv_values);
    } else if (mla) {
      EXPECT_EQ(c.mla.kv_lora_rank, 512);
      EXPECT_EQ(c.mla.qk_nope_head_dim, 128);
      EXPECT_EQ(c.mla.qk_rope_head_dim, 64);
      EXPECT_EQ(c.mla.v_head_dim, 128);
      EXPECT_EQ(c.rope.pairing, RopePairing::kInterleaved);
      EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kYarn);
      EXPECT_EQ(CacheValuesPerToken(c, CacheForm::kLatent), row.kv_values);
    } else {
      EXPECT_EQ(c.gqa.num_kv_heads, row.kv_heads);
      EXPECT_EQ(c.gqa.head_dim, row.head_dim);
      EXPECT_EQ(c.rope.pairing,
                PairsNeighbours(c) ? RopePairing::kInterleaved : RopePairing::kRotateHalf);
      EXPECT_EQ(CacheValuesPerToken(c, CacheForm::kHeads), row.kv_values);
    }
  }
}

TEST(PresetsTest, RopeDetailsOfSection6) {
  EXPECT_EQ(LoadPreset("llama-3-8b").rope.theta, 5e5);
  EXPECT_EQ(LoadPreset("llama-3.1-8b").rope.scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(LoadPreset("llama-3.1-8b").rope.scaling.factor, 8.0);
  EXPECT_EQ(LoadPreset("mistral-7b-v0.1").sliding_window, 4096);
  EXPECT_TRUE(LoadPreset("qwen2.5-7b").gqa.qkv_bias);
  EXPECT_EQ(LoadPreset("qwen2.5-7b").sliding_window, 0);  // use_sliding_window false
  EXPECT_EQ(LoadPreset("qwen2.5-7b").rope.theta, 1e6);
  EXPECT_EQ(LoadPreset("deepseek-v2-lite").mla.q_lora_rank, 0);
  EXPECT_EQ(LoadPreset("deepseek-v2").mla.q_lora_rank, 1536);
  EXPECT_EQ(LoadPreset("deepseek-v2").rope.scaling.mscale_all_dim, 0.707);
  EXPECT_EQ(LoadPreset("deepseek-v3").rope.scaling.mscale_all_dim, 1.0);
  const ModelConfig kimi = LoadPreset("kimi-k2");
  EXPECT_EQ(kimi.rope.theta, 5e4);
  EXPECT_EQ(kimi.rope.scaling.factor, 32.0);
  EXPECT_EQ(kimi.rope.scaling.beta_fast, 1.0);
  EXPECT_EQ(kimi.rope.scaling.beta_slow, 1.0);
  EXPECT_EQ(kimi.model_type, "deepseek_v3");
  const ModelConfig mixtral = LoadPreset("mixtral-8x7b");
  EXPECT_EQ(mixtral.rope.theta, 1e6);
  EXPECT_EQ(mixtral.sliding_window, 0);  // "sliding_window": null in the published file
  const ModelConfig gemma2 = LoadPreset("gemma-2-2b");
  EXPECT_EQ(gemma2.attn_logit_softcapping, 50.0);
  EXPECT_EQ(gemma2.sliding_window, 4096);
  EXPECT_DOUBLE_EQ(SoftmaxScale(gemma2), 1.0 / 16.0);  // query_pre_attn_scalar 256 ** -0.5
  ASSERT_EQ(gemma2.sliding_layers.size(), 26u);
  for (size_t i = 0; i < 26; ++i) EXPECT_EQ(gemma2.sliding_layers[i], i % 2 == 0) << i;
  const ModelConfig olmo2 = LoadPreset("olmo-2-7b");
  EXPECT_EQ(olmo2.gqa.qk_norm, QkNorm::kWholeProjection);
  EXPECT_EQ(olmo2.gqa.qk_norm_eps, 1e-6);
  EXPECT_EQ(olmo2.rope.theta, 5e5);
  const ModelConfig granite = LoadPreset("granite-3.3-8b");
  EXPECT_EQ(SoftmaxScale(granite), 0.0078125);  // attention_multiplier, not 128 ** -0.5
  EXPECT_EQ(granite.rope.theta, 1e7);
  const ModelConfig qwen_moe = LoadPreset("qwen1.5-moe-a2.7b-chat");
  EXPECT_TRUE(qwen_moe.gqa.qkv_bias);
  EXPECT_EQ(qwen_moe.sliding_window, 0);  // use_sliding_window false
  EXPECT_EQ(qwen_moe.rope.theta, 1e6);
  const ModelConfig gemma3 = LoadPreset("gemma-3-270m");
  EXPECT_EQ(gemma3.sliding_window, 512);
  EXPECT_EQ(gemma3.rope.theta, 1e6);  // full-attention layers
  EXPECT_TRUE(gemma3.sliding_rope_differs);
  EXPECT_EQ(gemma3.sliding_rope.theta, 1e4);  // rope_local_base_freq, the sliding layers
  EXPECT_EQ(gemma3.gqa.qk_norm, QkNorm::kPerHead);
  EXPECT_DOUBLE_EQ(SoftmaxScale(gemma3), 1.0 / 16.0);  // query_pre_attn_scalar 256 ** -0.5
  ASSERT_EQ(gemma3.sliding_layers.size(), 18u);
  for (size_t i = 0; i < 18; ++i) EXPECT_EQ(gemma3.sliding_layers[i], (i + 1) % 6 != 0) << i;
  const ModelConfig glm = LoadPreset("glm-4-9b-chat-hf");
  EXPECT_EQ(glm.model_type, "glm");
  EXPECT_EQ(glm.rope.theta, 1e4);
  EXPECT_EQ(glm.rope.rotary_dim, 64);  // partial_rotary_factor absent: GlmConfig's 0.5 of 128
  EXPECT_EQ(glm.rope.pairing, RopePairing::kInterleaved);
  EXPECT_TRUE(glm.gqa.qkv_bias);  // attention_bias: q/k/v only, o_proj has none
  EXPECT_FALSE(glm.gqa.o_bias);
  EXPECT_EQ(glm.max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(SoftmaxScale(glm), 1.0 / std::sqrt(128.0));
  const ModelConfig rw = LoadPreset("falcon-rw-1b");
  EXPECT_EQ(rw.model_type, "falcon");
  EXPECT_TRUE(rw.gqa.alibi);
  for (int64_t layer : {0, 23}) EXPECT_FALSE(rw.RotatesLayer(layer)) << layer;  // ALiBi, no RoPE
  EXPECT_TRUE(rw.gqa.qkv_bias);  // bias: true puts biases on query_key_value and dense
  EXPECT_TRUE(rw.gqa.o_bias);
  EXPECT_EQ(rw.max_position_embeddings, 2048);    // FalconConfig's default; the file has none
  EXPECT_DOUBLE_EQ(SoftmaxScale(rw), 1.0 / 8.0);  // 64 ** -0.5
}

TEST(PresetsTest, PresetsEqualTheCheckedInPublicConfigs) {
  const std::pair<const char*, const char*> pairs[] = {
      {"llama-3.1-8b", "llama-3.1-8b.json"}, {"mistral-7b-v0.1", "mistral-7b-v0.1.json"},
      {"qwen2.5-7b", "qwen2.5-7b.json"},     {"deepseek-v2-lite", "deepseek-v2-lite.json"},
      {"deepseek-v3", "deepseek-v3.json"},
  };
  for (const auto& [preset, file] : pairs) {
    SCOPED_TRACE(preset);
    const ModelConfig a = LoadPreset(preset);
    const ModelConfig b = LoadHfConfig(std::string(ATTN_SOURCE_DIR) + "/configs/" + file);
    EXPECT_EQ(a.model_type, b.model_type);
    EXPECT_EQ(a.hidden_size, b.hidden_size);
    EXPECT_EQ(a.num_heads, b.num_heads);
    EXPECT_EQ(a.num_layers, b.num_layers);
    EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
    EXPECT_EQ(a.gqa.num_kv_heads, b.gqa.num_kv_heads);
    EXPECT_EQ(a.gqa.head_dim, b.gqa.head_dim);
    EXPECT_EQ(a.gqa.qkv_bias, b.gqa.qkv_bias);
    EXPECT_EQ(a.mla.q_lora_rank, b.mla.q_lora_rank);
    EXPECT_EQ(a.mla.kv_lora_rank, b.mla.kv_lora_rank);
    EXPECT_EQ(a.rope.theta, b.rope.theta);
    EXPECT_EQ(a.rope.scaling.type, b.rope.scaling.type);
    EXPECT_EQ(a.rope.scaling.factor, b.rope.scaling.factor);
    EXPECT_EQ(a.rope.scaling.mscale_all_dim, b.rope.scaling.mscale_all_dim);
    EXPECT_EQ(a.sliding_window, b.sliding_window);
    EXPECT_EQ(SoftmaxScale(a), SoftmaxScale(b));
  }
}

// bf16 KV-cache bytes per token for the whole model, worked out by hand: 2 (K and V) · kv heads ·
// head_dim · 2 bytes · layers.
TEST(PresetsTest, CacheBytesPerTokenOfTheIssue11Presets) {
  const std::pair<const char*, double> rows[] = {
      {"mixtral-8x7b", 2.0 * 8 * 128 * 2 * 32},             // 131072 = 128 KiB
      {"gemma-2-2b", 2.0 * 4 * 256 * 2 * 26},               // 106496 = 104 KiB
      {"gemma-3-270m", 2.0 * 1 * 256 * 2 * 18},             // 18432 = 18 KiB
      {"olmo-2-7b", 2.0 * 32 * 128 * 2 * 32},               // 524288 = 512 KiB
      {"granite-3.3-8b", 2.0 * 8 * 128 * 2 * 40},           // 163840 = 160 KiB
      {"qwen1.5-moe-a2.7b-chat", 2.0 * 16 * 128 * 2 * 24},  // 196608 = 192 KiB
      {"glm-4-9b-chat-hf", 2.0 * 2 * 128 * 2 * 40},         // 40960 = 40 KiB
      {"falcon-rw-1b", 2.0 * 32 * 64 * 2 * 24},             // 196608 = 192 KiB
      {"glm-4-9b-0414", 2.0 * 2 * 128 * 2 * 40},            // 40960 = 40 KiB
      {"llama-4-scout-17b-16e", 2.0 * 8 * 128 * 2 * 48},    // 196608 = 192 KiB
      {"minicpm3-4b", 40.0 * (96 + 64) * 2 * 62},           // naive K 96 + V 64 per head
  };
  for (const auto& [preset, bytes] : rows) {
    SCOPED_TRACE(preset);
    InfoOptions options;
    options.dtype = DType::kBF16;
    const ModelStats stats = ComputeModelStats(LoadPreset(preset), options);
    ASSERT_FALSE(stats.forms.empty());
    EXPECT_EQ(stats.forms[0].bytes_per_token_model, bytes);
  }
}

// The three presets without a vendored file, against the published values written out here from
// the public copies src/io/presets.cc names (GLM-4-9B-0414's and Llama-4-Scout's config.json
// keys, MiniCPM3-4B's first 30 lines plus two transcriptions of the rest).
TEST(PresetsTest, GlmAndLlama4AndMiniCpm3PresetsHoldThePublishedValues) {
  const ModelConfig glm = LoadPreset("glm-4-9b-0414");
  EXPECT_EQ(glm.model_type, "glm4");
  EXPECT_EQ(glm.kind, AttentionKind::kGqa);
  EXPECT_EQ(glm.max_position_embeddings, 32768);
  EXPECT_EQ(glm.rope.theta, 1e4);
  EXPECT_EQ(glm.rope.scaling.type, RopeScalingType::kNone);
  EXPECT_EQ(glm.rope.rotary_dim, 64);  // partial_rotary_factor 0.5 of head_dim 128
  EXPECT_TRUE(glm.gqa.qkv_bias);       // attention_bias true: q/k/v, never o_proj
  EXPECT_FALSE(glm.gqa.o_bias);
  EXPECT_EQ(glm.gqa.qk_norm, QkNorm::kNone);
  EXPECT_EQ(glm.sliding_window, 0);
  EXPECT_DOUBLE_EQ(SoftmaxScale(glm), 1.0 / std::sqrt(128.0));

  const ModelConfig scout = LoadPreset("llama-4-scout-17b-16e");
  EXPECT_EQ(scout.model_type, "llama4_text");
  EXPECT_EQ(scout.max_position_embeddings, 262144);
  EXPECT_EQ(scout.rope.theta, 5e5);
  EXPECT_EQ(scout.rope.rotary_dim, 128);
  EXPECT_EQ(scout.rope.scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(scout.rope.scaling.factor, 8.0);
  EXPECT_EQ(scout.rope.scaling.low_freq_factor, 1.0);
  EXPECT_EQ(scout.rope.scaling.high_freq_factor, 4.0);
  EXPECT_EQ(scout.rope.scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(scout.gqa.qkv_bias);
  EXPECT_FALSE(scout.gqa.o_bias);
  EXPECT_EQ(scout.gqa.qk_norm, QkNorm::kL2);  // use_qk_norm: weightless, RoPE layers only
  EXPECT_EQ(scout.gqa.qk_norm_eps, 1e-5);
  EXPECT_EQ(scout.attention_chunk_size, 8192);
  EXPECT_EQ(scout.temperature.floor_scale, 8192.0);  // attn_temperature_tuning 4: on
  EXPECT_EQ(scout.temperature.attn_scale, 0.1);
  ASSERT_EQ(scout.nope_layers.size(), 48u);
  ASSERT_EQ(scout.chunked_layers.size(), 48u);
  for (int64_t i = 0; i < 48; ++i) {
    const bool nope = i % 4 == 3;  // every fourth layer, 3, 7, …, 47
    EXPECT_EQ(scout.nope_layers[i], nope) << i;
    EXPECT_EQ(scout.chunked_layers[i], !nope) << i;  // NoPE layers see the whole context
    EXPECT_EQ(scout.RotatesLayer(i), !nope) << i;
  }
  EXPECT_DOUBLE_EQ(SoftmaxScale(scout), 1.0 / std::sqrt(128.0));
  // The unsloth mirror's "no_rope_layers": [] means the same layers (no_rope_layer_interval 4).
  std::string mirror = PresetConfigJson("llama-4-scout-17b-16e");
  const size_t list = mirror.find("\"no_rope_layers\": [");
  ASSERT_NE(list, std::string::npos);
  const size_t open = mirror.find('[', list);
  mirror.replace(open, mirror.find(']', open) - open + 1, "[]");
  const ModelConfig from_mirror = ParseHfConfig(mirror);
  EXPECT_EQ(from_mirror.nope_layers, scout.nope_layers);
  EXPECT_EQ(from_mirror.chunked_layers, scout.chunked_layers);

  const ModelConfig cpm = LoadPreset("minicpm3-4b");
  EXPECT_EQ(cpm.model_type, "minicpm3");
  EXPECT_EQ(cpm.kind, AttentionKind::kMla);
  EXPECT_EQ(cpm.max_position_embeddings, 32768);
  EXPECT_EQ(cpm.mla.q_lora_rank, 768);
  EXPECT_EQ(cpm.mla.kv_lora_rank, 256);
  EXPECT_EQ(cpm.mla.qk_nope_head_dim, 64);
  EXPECT_EQ(cpm.mla.qk_rope_head_dim, 32);
  EXPECT_EQ(cpm.mla.v_head_dim, 64);
  EXPECT_EQ(cpm.rope.theta, 1e4);
  EXPECT_EQ(cpm.rope.pairing, RopePairing::kRotateHalf);
  EXPECT_EQ(cpm.rope.scaling.type, RopeScalingType::kLongrope);
  EXPECT_EQ(cpm.rope.scaling.original_max_position_embeddings, 32768);
  const std::vector<double> factors = {
      1.0591234137867171, 1.1241891283591912, 1.2596935748670968, 1.5380380402321725,
      2.093982484148734,  3.1446935121267696, 4.937952647693647,  7.524541999994549,
      10.475458000005451, 13.062047352306353, 14.85530648787323,  15.906017515851266,
      16.461961959767827, 16.740306425132907, 16.87581087164081,  16.940876586213285};
  EXPECT_EQ(cpm.rope.scaling.long_factor, factors);
  EXPECT_EQ(cpm.rope.scaling.short_factor, factors);
  // MiniCPMLongRoPE's sqrt(1 + ln(max / L) / ln L) with max = L = 32768 (docs/semantics.md §2).
  EXPECT_EQ(cpm.rope.scaling.attention_factor, 1.0);
  EXPECT_DOUBLE_EQ(SoftmaxScale(cpm), 1.0 / std::sqrt(96.0));  // (64 + 32) ** -0.5, no mscale
}

// Attention parameters per layer, summed by hand from the §5 tensor shapes.
TEST(PresetsTest, AttentionParametersOfTheIssue11Presets) {
  const std::pair<const char*, int64_t> rows[] = {
      // q and o 4096 x 4096, k and v 256 x 4096, q/k/v biases 4096 + 256 + 256.
      {"glm-4-9b-0414", 2 * 4096 * 4096 + 2 * 256 * 4096 + 4608},  // 35,656,192
      // q and o 5120 x 5120, k and v 1024 x 5120; the L2 q/k norm has no weight.
      {"llama-4-scout-17b-16e", 2 * 5120 * 5120 + 2 * 1024 * 5120},  // 62,914,560
      // q_a 768 x 2560, q_a_layernorm 768, q_b 40·96 x 768, kv_a (256 + 32) x 2560,
      // kv_a_layernorm 256, kv_b 40·(64 + 64) x 256, o 2560 x 40·64.
      {"minicpm3-4b",
       768 * 2560 + 768 + 3840 * 768 + 288 * 2560 + 256 + 5120 * 256 + 2560 * 2560},  // 13,517,824
  };
  for (const auto& [preset, params] : rows) {
    SCOPED_TRACE(preset);
    EXPECT_EQ(ComputeModelStats(LoadPreset(preset), InfoOptions{}).attention_params_layer, params);
  }
}

// Each of these presets' real layers runs with random weights: token-by-token decode after a
// short prefill equals one prefill (the cache and the per-layer rules agree), at positions past
// the RoPE scaling's original length, on a RoPE + chunked layer and on a NoPE layer of Llama 4,
// and MiniCPM3's MLA forms agree.
TEST(PresetsTest, FullSizeLayersOfTheIssue11PresetsDecodeAsTheyPrefill) {
  const std::tuple<const char*, int64_t, int64_t> cases[] = {{"glm-4-9b-0414", 0, 40000},
                                                             {"llama-4-scout-17b-16e", 0, 9000},
                                                             {"llama-4-scout-17b-16e", 3, 9000},
                                                             {"minicpm3-4b", 0, 33000}};
  for (const auto& [preset, layer_index, first_position] : cases) {
    SCOPED_TRACE(std::string(preset) + " layer " + std::to_string(layer_index));
    const ModelConfig c = LoadPreset(preset);
    const auto layer = BuildAttentionLayer(c, layer_index, RandomAttentionWeights(c, 7));
    constexpr int64_t kTokens = 5;
    const Tensor x = RandomUniform({1, kTokens, c.hidden_size}, 11, 1.0f);
    std::vector<int64_t> positions(kTokens);
    for (int64_t t = 0; t < kTokens; ++t) positions[t] = first_position + t;
    const TokenBatch batch{&x, positions, {}};
    const MlaForm form = c.kind == AttentionKind::kMla ? MlaForm::kNaive : MlaForm::kAuto;
    const Tensor full = layer->Forward(batch, form);
    double largest = 0.0;
    for (int64_t i = 0; i < full.size(); ++i) {
      ASSERT_TRUE(std::isfinite(full.data()[i])) << i;
      largest = std::max(largest, std::abs(static_cast<double>(full.data()[i])));
    }
    EXPECT_GT(largest, 0.0);
    const Tensor stepped = layer->PrefillThenDecode(batch, 2, form, DType::kF32);
    EXPECT_LT(testing::RelativeError(stepped, full), 1e-5);
    if (c.kind == AttentionKind::kMla) {
      EXPECT_LT(testing::RelativeError(layer->Forward(batch, MlaForm::kAbsorbed), full), 1e-5);
    }
  }
}

TEST(PresetsTest, NamesAreCaseInsensitive) { EXPECT_EQ(LoadPreset("DeepSeek-V3").num_heads, 128); }

TEST(PresetsTest, UnknownPresetListsTheKnownOnes) {
  try {
    LoadPreset("llama-4");
    FAIL() << "expected attn::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    const std::string message = e.what();
    EXPECT_NE(message.find("'llama-4'"), std::string::npos) << message;
    for (const std::string& name : PresetNames()) {
      EXPECT_NE(message.find(name), std::string::npos) << message;
    }
  }
}

// Falcon (HF FalconConfig semantics): the kv head count follows multi_query and
// new_decoder_architecture; ALiBi and MiniCPM3's longrope are refused with the reason.
TEST(FalconConfigTest, KvHeadsFollowTheArchitectureFlags) {
  const ModelConfig falcon7b = LoadPreset("falcon-7b");
  EXPECT_EQ(falcon7b.model_type, "falcon");
  EXPECT_EQ(falcon7b.max_position_embeddings, 2048);
  EXPECT_FALSE(falcon7b.gqa.qkv_bias);
  EXPECT_EQ(falcon7b.rope.rotary_dim, 64);

  const ModelConfig falcon40b = ParseHfConfig(R"({"model_type": "falcon", "hidden_size": 8192,
      "num_attention_heads": 128, "num_kv_heads": 8, "num_hidden_layers": 60,
      "new_decoder_architecture": true, "multi_query": true, "bias": false})");
  EXPECT_EQ(falcon40b.gqa.num_kv_heads, 8);
  EXPECT_EQ(falcon40b.gqa.head_dim, 64);

  const ModelConfig mha = ParseHfConfig(R"({"model_type": "falcon", "hidden_size": 64,
      "num_attention_heads": 4, "num_hidden_layers": 2, "multi_query": false, "bias": true})");
  EXPECT_EQ(mha.gqa.num_kv_heads, 4);
  EXPECT_TRUE(mha.gqa.qkv_bias);
  EXPECT_TRUE(mha.gqa.o_bias);

  // RefinedWeb-era spellings.
  const ModelConfig old = ParseHfConfig(R"({"model_type": "RefinedWebModel", "n_embed": 4544,
      "n_head": 71, "n_layer": 32, "multi_query": true})");
  EXPECT_EQ(old.model_type, "falcon");
  EXPECT_EQ(old.gqa.num_kv_heads, 1);
  EXPECT_EQ(old.hidden_size, 4544);

  // The original Falcon-40B config (tiiuae/falcon-40b before its HF port): n_head_kv without
  // new_decoder_architecture means the grouped layout, (2·8 + 128)·64 = 9216 fused rows.
  const ModelConfig rw40b = ParseHfConfig(R"({"model_type": "RefinedWeb", "n_embed": 8192,
      "n_head": 128, "n_head_kv": 8, "n_layer": 60, "bias": false, "parallel_attn": true})");
  EXPECT_EQ(rw40b.gqa.num_kv_heads, 8);
  EXPECT_EQ(rw40b.gqa.head_dim, 64);
  EXPECT_EQ((rw40b.num_heads + 2 * rw40b.gqa.num_kv_heads) * rw40b.gqa.head_dim, 9216);
}

TEST(FalconConfigTest, RefusesWhatItCannotRun) {
  auto expect = [](const std::string& json, ErrorKind kind, const std::string& needle) {
    try {
      ParseHfConfig(json);
      ADD_FAILURE() << "expected attn::Error for " << json;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), kind) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect(R"({"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4,
      "num_hidden_layers": 2, "alibi": "yes"})",
         ErrorKind::kInvalidArgument, "alibi");
  expect(R"({"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 6,
      "num_hidden_layers": 2})",
         ErrorKind::kInvalidArgument, "not divisible");
  expect(R"({"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4,
      "num_kv_heads": 3, "new_decoder_architecture": true, "num_hidden_layers": 2})",
         ErrorKind::kInvalidArgument, "num_key_value_heads (3)");
  expect(R"({"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4,
      "num_hidden_layers": 2, "rope_scaling": {"type": "longrope", "short_factor": [1.0],
      "long_factor": [1.0]}})",
         ErrorKind::kInvalidArgument, "rotary_dim / 2 = 8 entries each, got 1");
}

}  // namespace
}  // namespace attn
