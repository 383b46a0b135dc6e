// SPDX-License-Identifier: Apache-2.0
// Tests for ParseHfConfig / LoadHfConfig and the ModelConfig rules (ValidateConfig,
// SoftmaxScale, YarnMscale). Expected values come from
// docs/semantics.md §2, §3 and §6 and from the public config.json files in configs/.
#include "attn/hf_config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "attn/config.h"
#include "attn/error.h"
#include "attn/layer_weights.h"

#ifndef ATTN_SOURCE_DIR
#error "ATTN_SOURCE_DIR must name the repository root"
#endif

namespace attn {
namespace {

using nlohmann::json;

std::string ConfigPath(const std::string& name) {
  return std::string(ATTN_SOURCE_DIR) + "/configs/" + name;
}

json ReadJson(const std::string& name) {
  std::ifstream in(ConfigPath(name));
  EXPECT_TRUE(in.is_open()) << ConfigPath(name);
  std::stringstream text;
  text << in.rdbuf();
  return json::parse(text.str());
}

ModelConfig Parse(const json& j) { return ParseHfConfig(j.dump()); }

// Runs `fn`, expects an attn::Error of `kind` whose message contains every `needles` entry.
void ExpectError(const std::function<void()>& fn, ErrorKind kind,
                 std::initializer_list<std::string> needles) {
  try {
    fn();
    ADD_FAILURE() << "expected attn::Error";
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind)) << e.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "message '" << e.what() << "' does not mention '" << needle << "'";
    }
  }
}

void ExpectSameScaling(const RopeScaling& a, const RopeScaling& b) {
  EXPECT_EQ(a.type, b.type);
  EXPECT_EQ(a.factor, b.factor);
  EXPECT_EQ(a.low_freq_factor, b.low_freq_factor);
  EXPECT_EQ(a.high_freq_factor, b.high_freq_factor);
  EXPECT_EQ(a.original_max_position_embeddings, b.original_max_position_embeddings);
  EXPECT_EQ(a.beta_fast, b.beta_fast);
  EXPECT_EQ(a.beta_slow, b.beta_slow);
  EXPECT_EQ(a.mscale, b.mscale);
  EXPECT_EQ(a.mscale_all_dim, b.mscale_all_dim);
  EXPECT_EQ(a.attention_factor, b.attention_factor);
  EXPECT_EQ(a.truncate, b.truncate);
}

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.kind, b.kind);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.gqa.num_kv_heads, b.gqa.num_kv_heads);
  EXPECT_EQ(a.gqa.head_dim, b.gqa.head_dim);
  EXPECT_EQ(a.gqa.qkv_bias, b.gqa.qkv_bias);
  EXPECT_EQ(a.gqa.o_bias, b.gqa.o_bias);
  EXPECT_EQ(a.mla.q_lora_rank, b.mla.q_lora_rank);
  EXPECT_EQ(a.mla.kv_lora_rank, b.mla.kv_lora_rank);
  EXPECT_EQ(a.mla.qk_nope_head_dim, b.mla.qk_nope_head_dim);
  EXPECT_EQ(a.mla.qk_rope_head_dim, b.mla.qk_rope_head_dim);
  EXPECT_EQ(a.mla.v_head_dim, b.mla.v_head_dim);
  EXPECT_EQ(a.mla.rms_norm_eps, b.mla.rms_norm_eps);
  EXPECT_EQ(a.rope.theta, b.rope.theta);
  EXPECT_EQ(a.rope.rotary_dim, b.rope.rotary_dim);
  EXPECT_EQ(a.rope.pairing, b.rope.pairing);
  ExpectSameScaling(a.rope.scaling, b.rope.scaling);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.sliding_layers, b.sliding_layers);
}

// KV-cache values per token per layer (docs/semantics.md §1 and §3): 2·G·d for the GQA family, the
// latent row rk + dr for MLA in its absorbed form.
int64_t KvValuesPerToken(const ModelConfig& c) {
  if (c.kind == AttentionKind::kMla) return c.mla.kv_lora_rank + c.mla.qk_rope_head_dim;
  return 2 * c.gqa.num_kv_heads * c.gqa.head_dim;
}

// A hand-built valid GQA config for ValidateConfig tests.
ModelConfig SmallGqa() {
  ModelConfig c;
  c.model_type = "llama";
  c.hidden_size = 64;
  c.num_heads = 4;
  c.num_layers = 2;
  c.max_position_embeddings = 128;
  c.gqa.num_kv_heads = 2;
  c.gqa.head_dim = 16;
  c.rope.rotary_dim = 16;
  return c;
}

// ---------------------------------------------------------------- real configurations (§6)

TEST(HfConfigReal, Llama31_8B) {
  const ModelConfig c = LoadHfConfig(ConfigPath("llama-3.1-8b.json"));
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.kind, AttentionKind::kGqa);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.gqa.num_kv_heads, 8);
  EXPECT_EQ(c.gqa.head_dim, 128);
  EXPECT_EQ(c.num_layers, 32);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_FALSE(c.gqa.qkv_bias);
  EXPECT_FALSE(c.gqa.o_bias);
  EXPECT_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.rotary_dim, 128);
  EXPECT_EQ(c.rope.pairing, RopePairing::kRotateHalf);
  EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(c.rope.scaling.factor, 8.0);
  EXPECT_EQ(c.rope.scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope.scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope.scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_TRUE(c.sliding_layers.empty());
  EXPECT_EQ(c.WindowForLayer(31), 0);
  EXPECT_EQ(c.QueryKeyHeadDim(), 128);
  EXPECT_EQ(c.ValueHeadDim(), 128);
  EXPECT_DOUBLE_EQ(SoftmaxScale(c), 1.0 / std::sqrt(128.0));
  EXPECT_EQ(KvValuesPerToken(c), 2048);
}

TEST(HfConfigReal, Mistral7Bv01) {
  const ModelConfig c = LoadHfConfig(ConfigPath("mistral-7b-v0.1.json"));
  EXPECT_EQ(c.model_type, "mistral");
  EXPECT_EQ(c.kind, AttentionKind::kGqa);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.gqa.num_kv_heads, 8);
  EXPECT_EQ(c.gqa.head_dim, 128);  // no head_dim key: hidden / heads
  EXPECT_EQ(c.num_layers, 32);
  EXPECT_FALSE(c.gqa.qkv_bias);
  EXPECT_FALSE(c.gqa.o_bias);
  EXPECT_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.rotary_dim, 128);
  EXPECT_EQ(c.rope.pairing, RopePairing::kRotateHalf);
  EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kNone);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_TRUE(c.sliding_layers.empty());
  EXPECT_EQ(c.WindowForLayer(0), 4096);
  EXPECT_EQ(c.WindowForLayer(31), 4096);
  EXPECT_EQ(KvValuesPerToken(c), 2048);
}

TEST(HfConfigReal, Qwen25_7B) {
  const ModelConfig c = LoadHfConfig(ConfigPath("qwen2.5-7b.json"));
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_EQ(c.kind, AttentionKind::kGqa);
  EXPECT_EQ(c.hidden_size, 3584);
  EXPECT_EQ(c.num_heads, 28);
  EXPECT_EQ(c.gqa.num_kv_heads, 4);
  EXPECT_EQ(c.gqa.head_dim, 128);
  EXPECT_EQ(c.num_layers, 28);
  EXPECT_TRUE(c.gqa.qkv_bias);
  EXPECT_FALSE(c.gqa.o_bias);
  EXPECT_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rope.rotary_dim, 128);
  EXPECT_EQ(c.rope.pairing, RopePairing::kRotateHalf);
  EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kNone);
  // use_sliding_window is false: sliding_window 131072 must not apply.
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.WindowForLayer(27), 0);
  EXPECT_EQ(KvValuesPerToken(c), 1024);
}

TEST(HfConfigReal, DeepSeekV2Lite) {
  const ModelConfig c = LoadHfConfig(ConfigPath("deepseek-v2-lite.json"));
  EXPECT_EQ(c.model_type, "deepseek_v2");
  EXPECT_EQ(c.kind, AttentionKind::kMla);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_heads, 16);
  EXPECT_EQ(c.num_layers, 27);
  EXPECT_EQ(c.mla.q_lora_rank, 0);  // null: no query compression
  EXPECT_EQ(c.mla.kv_lora_rank, 512);
  EXPECT_EQ(c.mla.qk_nope_head_dim, 128);
  EXPECT_EQ(c.mla.qk_rope_head_dim, 64);
  EXPECT_EQ(c.mla.v_head_dim, 128);
  EXPECT_EQ(c.mla.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.rotary_dim, 64);
  EXPECT_EQ(c.rope.pairing, RopePairing::kInterleaved);
  EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kYarn);
  EXPECT_EQ(c.rope.scaling.factor, 40.0);
  EXPECT_EQ(c.rope.scaling.mscale, 0.707);
  EXPECT_EQ(c.rope.scaling.mscale_all_dim, 0.707);
  EXPECT_EQ(c.rope.scaling.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.rope.scaling.beta_fast, 32.0);
  EXPECT_EQ(c.rope.scaling.beta_slow, 1.0);
  EXPECT_EQ(c.QueryKeyHeadDim(), 192);
  EXPECT_EQ(c.ValueHeadDim(), 128);
  EXPECT_NEAR(SoftmaxScale(c), 0.114721, 1e-6);
  EXPECT_EQ(KvValuesPerToken(c), 576);
}

TEST(HfConfigReal, DeepSeekV3) {
  const ModelConfig c = LoadHfConfig(ConfigPath("deepseek-v3.json"));
  EXPECT_EQ(c.model_type, "deepseek_v3");
  EXPECT_EQ(c.kind, AttentionKind::kMla);
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_heads, 128);
  EXPECT_EQ(c.num_layers, 61);
  EXPECT_EQ(c.max_position_embeddings, 163840);
  EXPECT_EQ(c.mla.q_lora_rank, 1536);
  EXPECT_EQ(c.mla.kv_lora_rank, 512);
  EXPECT_EQ(c.mla.qk_nope_head_dim, 128);
  EXPECT_EQ(c.mla.qk_rope_head_dim, 64);
  EXPECT_EQ(c.mla.v_head_dim, 128);
  EXPECT_EQ(c.rope.rotary_dim, 64);
  EXPECT_EQ(c.rope.pairing, RopePairing::kInterleaved);
  EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kYarn);
  EXPECT_EQ(c.rope.scaling.factor, 40.0);
  EXPECT_EQ(c.rope.scaling.mscale, 1.0);
  EXPECT_EQ(c.rope.scaling.mscale_all_dim, 1.0);
  EXPECT_EQ(c.rope.scaling.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.rope.scaling.attention_factor, 0.0);
  EXPECT_TRUE(c.rope.scaling.truncate);
  EXPECT_EQ(c.QueryKeyHeadDim(), 192);
  EXPECT_EQ(c.ValueHeadDim(), 128);
  // (dn + dr)^-0.5 · mscale(40, 1)^2 = 0.0721688 · 1.873854 (docs/semantics.md §3).
  EXPECT_NEAR(SoftmaxScale(c), 0.135234, 1e-6);
  // The known wrong scales (docs/semantics.md §7.1) are far from it.
  EXPECT_GT(std::fabs(SoftmaxScale(c) - 1.0 / std::sqrt(576.0)), 0.05);
  EXPECT_GT(std::fabs(SoftmaxScale(c) - 1.0 / std::sqrt(56.0)), 0.0005);
  EXPECT_EQ(KvValuesPerToken(c), 576);
  EXPECT_EQ(c.num_heads * (c.QueryKeyHeadDim() + c.ValueHeadDim()), 40960);  // naive cache
}

TEST(HfConfigReal, KimiK2AliasAndValues) {
  json j = ReadJson("deepseek-v3.json");
  j["num_attention_heads"] = 64;
  j["max_position_embeddings"] = 131072;
  j["rope_theta"] = 50000.0;
  j["rope_scaling"] = {{"beta_fast", 1.0},      {"beta_slow", 1.0},
                       {"factor", 32.0},        {"mscale", 1.0},
                       {"mscale_all_dim", 1.0}, {"original_max_position_embeddings", 4096},
                       {"type", "yarn"}};
  const ModelConfig as_v3 = Parse(j);
  j["model_type"] = "kimi_k2";
  const ModelConfig as_kimi = Parse(j);
  ExpectSameConfig(as_v3, as_kimi);
  EXPECT_EQ(as_kimi.model_type, "deepseek_v3");
  EXPECT_EQ(as_kimi.num_heads, 64);
  EXPECT_EQ(as_kimi.rope.theta, 50000.0);
  EXPECT_EQ(as_kimi.rope.scaling.factor, 32.0);
  EXPECT_EQ(as_kimi.rope.scaling.beta_fast, 1.0);
  EXPECT_EQ(as_kimi.rope.scaling.beta_slow, 1.0);
  EXPECT_NEAR(SoftmaxScale(as_kimi), std::pow(0.1 * std::log(32.0) + 1.0, 2) / std::sqrt(192.0),
              1e-12);
}

// DeepSeek's modeling code and transformers build the latent RMSNorms with eps 1e-6, not with
// config.rms_norm_eps (docs/semantics.md §3); a Megatron config's layernorm_epsilon is used.
TEST(HfConfigMla, LatentNormEpsIsTheReferencesNotRmsNormEps) {
  json j = json::parse(R"({"model_type": "deepseek_v3", "hidden_size": 256, "num_hidden_layers": 2,
      "num_attention_heads": 4, "q_lora_rank": 96, "kv_lora_rank": 64, "qk_nope_head_dim": 32,
      "qk_rope_head_dim": 32, "v_head_dim": 32, "rope_theta": 10000,
      "max_position_embeddings": 1280, "rms_norm_eps": 1e-5})");
  EXPECT_EQ(Parse(j).mla.rms_norm_eps, 1e-6);
  j["rms_norm_eps"] = "1e-5";  // still read, so a wrong type is still an error
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"rms_norm_eps"});
}

// ---------------------------------------------------------------- tiny test configurations

TEST(HfConfigTiny, Llama31) {
  const ModelConfig c = LoadHfConfig(ConfigPath("tiny-llama31.json"));
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.gqa.num_kv_heads, 2);
  EXPECT_EQ(c.gqa.head_dim, 32);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.rope.rotary_dim, 32);
  EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(c.rope.scaling.original_max_position_embeddings, 64);
  EXPECT_GT(c.max_position_embeddings, c.rope.scaling.original_max_position_embeddings);
}

TEST(HfConfigTiny, Qwen2) {
  const ModelConfig c = LoadHfConfig(ConfigPath("tiny-qwen2.json"));
  EXPECT_EQ(c.hidden_size, 192);
  EXPECT_EQ(c.num_heads, 6);
  EXPECT_EQ(c.gqa.num_kv_heads, 2);
  EXPECT_EQ(c.gqa.head_dim, 32);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_TRUE(c.gqa.qkv_bias);
  EXPECT_FALSE(c.gqa.o_bias);
  EXPECT_EQ(c.sliding_window, 0);
}

TEST(HfConfigTiny, Mistral) {
  const ModelConfig c = LoadHfConfig(ConfigPath("tiny-mistral.json"));
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.gqa.num_kv_heads, 2);
  EXPECT_EQ(c.gqa.head_dim, 32);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.WindowForLayer(0), 5);
  EXPECT_EQ(c.WindowForLayer(1), 5);
}

TEST(HfConfigTiny, DeepSeekV3) {
  const ModelConfig c = LoadHfConfig(ConfigPath("tiny-deepseek-v3.json"));
  EXPECT_EQ(c.model_type, "deepseek_v3");
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.mla.q_lora_rank, 96);
  EXPECT_EQ(c.mla.kv_lora_rank, 64);
  EXPECT_EQ(c.mla.qk_nope_head_dim, 32);
  EXPECT_EQ(c.mla.qk_rope_head_dim, 16);
  EXPECT_EQ(c.mla.v_head_dim, 24);
  EXPECT_EQ(c.rope.rotary_dim, 16);
  EXPECT_EQ(c.rope.pairing, RopePairing::kInterleaved);
  EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kYarn);
  EXPECT_EQ(c.rope.scaling.factor, 40.0);
  EXPECT_EQ(c.rope.scaling.original_max_position_embeddings, 32);
  EXPECT_NEAR(SoftmaxScale(c), 0.27046755772176, 1e-12);
}

TEST(HfConfigTiny, DeepSeekV2Lite) {
  const ModelConfig c = LoadHfConfig(ConfigPath("tiny-deepseek-v2-lite.json"));
  EXPECT_EQ(c.model_type, "deepseek_v2");
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.mla.q_lora_rank, 0);
  EXPECT_EQ(c.mla.kv_lora_rank, 64);
  EXPECT_EQ(c.rope.scaling.mscale, 0.707);
  EXPECT_EQ(c.rope.scaling.mscale_all_dim, 0.707);
  const double m = 0.1 * 0.707 * std::log(40.0) + 1.0;
  EXPECT_NEAR(SoftmaxScale(c), m * m / std::sqrt(48.0), 1e-12);
}

// ---------------------------------------------------------------- RoPE spellings

TEST(HfConfigRope, RopeParametersSpellingMatchesRopeScaling) {
  for (const char* name : {"llama-3.1-8b.json", "deepseek-v3.json", "deepseek-v2-lite.json",
                           "tiny-llama31.json", "tiny-deepseek-v3.json"}) {
    SCOPED_TRACE(name);
    json old_style = ReadJson(name);
    json new_style = old_style;
    json params = new_style["rope_scaling"];
    // Newer transformers spell the type rope_type and move rope_theta into the dict.
    if (params.contains("type")) {
      params["rope_type"] = params["type"];
      params.erase("type");
    }
    params["rope_theta"] = new_style["rope_theta"];
    new_style.erase("rope_scaling");
    new_style.erase("rope_theta");
    new_style["rope_parameters"] = params;
    ExpectSameConfig(Parse(old_style), Parse(new_style));
  }
}

TEST(HfConfigRope, DefaultRopeParametersCarryTheta) {
  json j = ReadJson("mistral-7b-v0.1.json");
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  ExpectSameConfig(Parse(j), LoadHfConfig(ConfigPath("mistral-7b-v0.1.json")));
  j["rope_parameters"] = {{"rope_theta", 250000.0}};  // no type at all: unscaled
  const ModelConfig c = Parse(j);
  EXPECT_EQ(c.rope.theta, 250000.0);
  EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kNone);
}

TEST(HfConfigRope, BothSpellingsMustAgree) {
  json j = ReadJson("llama-3.1-8b.json");
  j["rope_parameters"] = j["rope_scaling"];
  j["rope_parameters"]["rope_theta"] = 500000.0;
  EXPECT_EQ(Parse(j).rope.scaling.type, RopeScalingType::kLlama3);  // consistent: fine
  j["rope_parameters"]["factor"] = 4.0;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"rope_scaling", "rope_parameters"});
  j["rope_parameters"]["factor"] = 8.0;
  j["rope_parameters"]["rope_theta"] = 10000.0;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"rope_theta"});
}

TEST(HfConfigRope, TypeAndRopeTypeKeys) {
  json j = ReadJson("tiny-llama31.json");
  j["rope_scaling"].erase("rope_type");
  j["rope_scaling"]["type"] = "llama3";
  EXPECT_EQ(Parse(j).rope.scaling.type, RopeScalingType::kLlama3);
  j["rope_scaling"]["rope_type"] = "llama3";
  EXPECT_EQ(Parse(j).rope.scaling.type, RopeScalingType::kLlama3);
  j["rope_scaling"]["rope_type"] = "linear";
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"rope_type", "type"});
}

TEST(HfConfigRope, NullOrDefaultMeansNoScaling) {
  json j = ReadJson("tiny-llama31.json");
  j["rope_scaling"] = nullptr;
  EXPECT_EQ(Parse(j).rope.scaling.type, RopeScalingType::kNone);
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(Parse(j).rope.scaling.type, RopeScalingType::kNone);
  j["rope_scaling"] = {{"type", nullptr}};
  EXPECT_EQ(Parse(j).rope.scaling.type, RopeScalingType::kNone);
}

TEST(HfConfigRope, Linear) {
  json j = ReadJson("tiny-mistral.json");
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const ModelConfig c = Parse(j);
  EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kLinear);
  EXPECT_EQ(c.rope.scaling.factor, 2.0);
}

TEST(HfConfigRope, YarnDefaultsAndOptionalKeys) {
  // Qwen-style yarn: no mscale keys, no original length (defaults to max_position_embeddings).
  json j = ReadJson("tiny-qwen2.json");
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  ModelConfig c = Parse(j);
  EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kYarn);
  EXPECT_EQ(c.rope.scaling.original_max_position_embeddings, 512);
  EXPECT_EQ(c.rope.scaling.beta_fast, 32.0);
  EXPECT_EQ(c.rope.scaling.beta_slow, 1.0);
  EXPECT_EQ(c.rope.scaling.mscale, 0.0);
  EXPECT_EQ(c.rope.scaling.mscale_all_dim, 0.0);
  EXPECT_EQ(c.rope.scaling.attention_factor, 0.0);
  EXPECT_TRUE(c.rope.scaling.truncate);
  // GQA: the yarn attention factor lives on cos/sin, never on the softmax scale.
  EXPECT_DOUBLE_EQ(SoftmaxScale(c), 1.0 / std::sqrt(32.0));

  j["rope_scaling"]["attention_factor"] = 1.25;
  j["rope_scaling"]["truncate"] = false;
  j["rope_scaling"]["original_max_position_embeddings"] = 128;
  j["rope_scaling"]["unknown_provenance_key"] = "ignored";
  c = Parse(j);
  EXPECT_EQ(c.rope.scaling.attention_factor, 1.25);
  EXPECT_FALSE(c.rope.scaling.truncate);
  EXPECT_EQ(c.rope.scaling.original_max_position_embeddings, 128);
}

TEST(HfConfigRope, MlaWithoutMscaleAllDimUsesPlainScale) {
  json j = ReadJson("tiny-deepseek-v3.json");
  j["rope_scaling"].erase("mscale_all_dim");
  EXPECT_DOUBLE_EQ(SoftmaxScale(Parse(j)), 1.0 / std::sqrt(48.0));
  j["rope_scaling"] = nullptr;
  EXPECT_DOUBLE_EQ(SoftmaxScale(Parse(j)), 1.0 / std::sqrt(48.0));
}

TEST(HfConfigRope, RopeInterleaveFalseMeansRotateHalf) {
  json j = ReadJson("tiny-deepseek-v3.json");
  j["rope_interleave"] = true;
  EXPECT_EQ(Parse(j).rope.pairing, RopePairing::kInterleaved);
  j["rope_interleave"] = false;
  EXPECT_EQ(Parse(j).rope.pairing, RopePairing::kRotateHalf);
}

TEST(HfConfigRope, PartialRotaryFactor) {
  json j = ReadJson("tiny-llama31.json");
  j["partial_rotary_factor"] = 0.5;
  EXPECT_EQ(Parse(j).rope.rotary_dim, 16);
  j.erase("partial_rotary_factor");
  j["rope_parameters"] = j["rope_scaling"];
  j["rope_parameters"]["partial_rotary_factor"] = 0.25;
  EXPECT_EQ(Parse(j).rope.rotary_dim, 8);
}

// ---------------------------------------------------------------- GQA details and windows

TEST(HfConfigGqa, HeadDimDefaultsAndOverrides) {
  json j = ReadJson("tiny-llama31.json");
  j["head_dim"] = nullptr;
  EXPECT_EQ(Parse(j).gqa.head_dim, 256 / 8);
  j["head_dim"] = 64;  // explicit head_dim may differ from hidden / heads
  const ModelConfig c = Parse(j);
  EXPECT_EQ(c.gqa.head_dim, 64);
  EXPECT_EQ(c.rope.rotary_dim, 64);
  EXPECT_DOUBLE_EQ(SoftmaxScale(c), 0.125);
  j.erase("num_key_value_heads");  // absent: MHA
  EXPECT_EQ(Parse(j).gqa.num_kv_heads, 8);
}

TEST(HfConfigGqa, LlamaAttentionBiasCoversQkvAndO) {
  json j = ReadJson("tiny-llama31.json");
  j["attention_bias"] = true;
  const ModelConfig c = Parse(j);
  EXPECT_TRUE(c.gqa.qkv_bias);
  EXPECT_TRUE(c.gqa.o_bias);
}

TEST(HfConfigGqa, LlamaHasNoWindow) {
  json j = ReadJson("tiny-llama31.json");
  j["sliding_window"] = 16;
  EXPECT_EQ(Parse(j).sliding_window, 0);
}

TEST(HfConfigGqa, MistralNullWindowIsNone) {
  json j = ReadJson("tiny-mistral.json");
  j["sliding_window"] = nullptr;
  EXPECT_EQ(Parse(j).WindowForLayer(0), 0);
}

TEST(HfConfigGqa, Qwen2WindowOnlyWhenEnabledAndAboveMaxWindowLayers) {
  json j = ReadJson("tiny-qwen2.json");
  j["sliding_window"] = 7;
  j["use_sliding_window"] = false;
  EXPECT_EQ(Parse(j).WindowForLayer(1), 0);

  j["use_sliding_window"] = true;
  j["max_window_layers"] = 1;
  ModelConfig c = Parse(j);
  EXPECT_EQ(c.sliding_window, 7);
  EXPECT_EQ(c.sliding_layers, (std::vector<bool>{false, true}));
  EXPECT_EQ(c.WindowForLayer(0), 0);
  EXPECT_EQ(c.WindowForLayer(1), 7);

  j["max_window_layers"] = 2;  // no layer reaches max_window_layers: window nowhere
  c = Parse(j);
  EXPECT_EQ(c.WindowForLayer(0), 0);
  EXPECT_EQ(c.WindowForLayer(1), 0);

  j["max_window_layers"] = 0;
  c = Parse(j);
  EXPECT_EQ(c.WindowForLayer(0), 7);
  EXPECT_EQ(c.WindowForLayer(1), 7);
}

TEST(HfConfigGqa, LayerTypesDefineSlidingLayers) {
  json j = ReadJson("tiny-qwen2.json");
  j["sliding_window"] = 7;
  j["use_sliding_window"] = true;
  j["max_window_layers"] = 1;  // would give {false, true}; layer_types wins
  j["layer_types"] = {"sliding_attention", "full_attention"};
  ModelConfig c = Parse(j);
  EXPECT_EQ(c.WindowForLayer(0), 7);
  EXPECT_EQ(c.WindowForLayer(1), 0);

  json m = ReadJson("tiny-mistral.json");
  m["layer_types"] = {"full_attention", "sliding_attention"};
  c = Parse(m);
  EXPECT_EQ(c.WindowForLayer(0), 0);
  EXPECT_EQ(c.WindowForLayer(1), 5);

  j["layer_types"] = {"sliding_attention", "chunked_attention"};
  ExpectError([&] { Parse(j); }, ErrorKind::kUnsupported, {"layer_types", "chunked_attention"});
  j["layer_types"] = {"sliding_attention"};
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"layer_types"});
  j["layer_types"] = {"sliding_attention", 3};
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"layer_types"});
  j["layer_types"] = "sliding_attention";
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"layer_types"});
}

TEST(HfConfigGqa, UnrelatedKeysAreIgnored) {
  json j = ReadJson("tiny-llama31.json");
  j["n_routed_experts"] = "not a number";
  j["some_future_key"] = {{"type", "dynamic"}};
  ExpectSameConfig(Parse(j), LoadHfConfig(ConfigPath("tiny-llama31.json")));
}

// quantization_config: DeepSeek's fp8 block layout is read (transformers' FineGrainedFP8Config
// defaults the block to 128 × 128); other methods store tensors attn does not know: refused.
TEST(HfConfigQuantization, Fp8BlockScales) {
  json j = ReadJson("tiny-llama31.json");
  EXPECT_FALSE(Parse(j).quantization.fp8_blocks);
  j["quantization_config"] = {{"quant_method", "fp8"},
                              {"fmt", "e4m3"},
                              {"activation_scheme", "dynamic"},
                              {"weight_block_size", {64, 32}}};
  ModelConfig config = Parse(j);
  EXPECT_TRUE(config.quantization.fp8_blocks);
  EXPECT_EQ(config.quantization.block_rows, 64);
  EXPECT_EQ(config.quantization.block_cols, 32);
  j["quantization_config"].erase("weight_block_size");
  config = Parse(j);
  EXPECT_EQ(config.quantization.block_rows, 128);
  EXPECT_EQ(config.quantization.block_cols, 128);
  j["quantization_config"]["weight_block_size"] = {128, 0};
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"weight_block_size"});
  j["quantization_config"]["weight_block_size"] = {128};
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"weight_block_size"});
  j["quantization_config"]["weight_block_size"] = {128, 128};
  j["quantization_config"]["fmt"] = "e5m2";
  ExpectError([&] { Parse(j); }, ErrorKind::kUnsupported, {"fmt", "e5m2"});
  j["quantization_config"] = {{"quant_method", "awq"}, {"bits", 4}};
  ExpectError([&] { Parse(j); }, ErrorKind::kUnsupported, {"quant_method", "awq"});
  j["quantization_config"] = "fp8";
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"quantization_config"});
}

TEST(HfConfigGqa, IntegralFloatsAreIntegers) {
  json j = ReadJson("tiny-mistral.json");
  j["hidden_size"] = 128.0;
  EXPECT_EQ(Parse(j).hidden_size, 128);
  j["hidden_size"] = 128.5;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"hidden_size"});
  j["hidden_size"] = true;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"hidden_size"});
}

// ---------------------------------------------------------------- errors

TEST(HfConfigErrors, UnknownModelType) {
  json j = ReadJson("tiny-llama31.json");
  j["model_type"] = "gpt2";
  ExpectError(
      [&] { Parse(j); }, ErrorKind::kUnsupported,
      {"unsupported model_type 'gpt2'", "llama, mistral, mixtral, qwen2, qwen2_moe, qwen3"});
  j.erase("model_type");
  ExpectError([&] { Parse(j); }, ErrorKind::kNotFound, {"'model_type'"});
  j["model_type"] = 7;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"model_type"});
}

TEST(HfConfigErrors, UnsupportedRopeTypes) {
  for (const char* type : {"su", "ntk", "mrope", "longrope_v2"}) {
    SCOPED_TRACE(type);
    json j = ReadJson("tiny-llama31.json");
    j["rope_scaling"] = {{"type", type}, {"factor", 2.0}};
    ExpectError([&] { Parse(j); }, ErrorKind::kUnsupported,
                {std::string("unsupported rope scaling type '") + type + "'"});
    j.erase("rope_scaling");
    j["rope_parameters"] = {{"rope_type", type}, {"factor", 2.0}};
    ExpectError([&] { Parse(j); }, ErrorKind::kUnsupported, {std::string("'") + type + "'"});
  }
}

TEST(HfConfigErrors, KeysOfUnsupportedScalingAreRefused) {
  json j = ReadJson("tiny-qwen2.json");
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}, {"long_factor", {1.0, 2.0}}};
  ExpectError([&] { Parse(j); }, ErrorKind::kUnsupported, {"long_factor"});
}

TEST(HfConfigRope, DynamicUsesMaxPositionEmbeddingsAsItsLength) {
  json j = ReadJson("tiny-llama31.json");
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  const ModelConfig config = Parse(j);
  EXPECT_EQ(config.rope.scaling.type, RopeScalingType::kDynamic);
  EXPECT_EQ(config.rope.scaling.factor, 2.0);
  EXPECT_EQ(config.rope.scaling.original_max_position_embeddings, config.max_position_embeddings);
  j["rope_scaling"]["original_max_position_embeddings"] = config.max_position_embeddings * 2;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument,
              {"original_max_position_embeddings", "ambiguous"});
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 0.5}};
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"must be >= 1 for dynamic"});
}

TEST(HfConfigTiny, Phi3LongropeAndPartialRotary) {
  const ModelConfig config = Parse(ReadJson("tiny-phi3.json"));
  EXPECT_EQ(config.model_type, "phi3");
  EXPECT_EQ(config.gqa.head_dim, 32);
  EXPECT_EQ(config.gqa.num_kv_heads, 2);
  EXPECT_EQ(config.rope.rotary_dim, 24);  // 0.75 × 32
  EXPECT_EQ(config.rope.pairing, RopePairing::kRotateHalf);
  EXPECT_FALSE(config.gqa.qkv_bias);
  EXPECT_FALSE(config.gqa.o_bias);
  EXPECT_EQ(config.sliding_window, 6);
  EXPECT_TRUE(config.sliding_layers.empty());  // every layer
  const RopeScaling& s = config.rope.scaling;
  EXPECT_EQ(s.type, RopeScalingType::kLongrope);
  EXPECT_EQ(s.original_max_position_embeddings, 256);  // the top-level key
  EXPECT_DOUBLE_EQ(s.factor, 4096.0 / 256.0);
  EXPECT_EQ(s.short_factor.size(), 12u);
  EXPECT_DOUBLE_EQ(s.long_factor[11], 40.0);
}

// Phi3Config renames the scaling types of earlier Phi-3 configs: "su" (Phi-3-vision-128k still
// ships it) and "yarn" are longrope for phi3, and only for phi3.
TEST(HfConfigRope, Phi3ReadsSuAndYarnAsLongrope) {
  for (const char* type : {"su", "yarn"}) {
    json j = ReadJson("tiny-phi3.json");
    j["rope_scaling"]["type"] = type;
    EXPECT_EQ(Parse(j).rope.scaling.type, RopeScalingType::kLongrope) << type;
  }
  json j = ReadJson("tiny-llama31.json");
  j["rope_scaling"] = {{"type", "su"}, {"short_factor", {1.0}}, {"long_factor", {1.0}}};
  ExpectError([&] { Parse(j); }, ErrorKind::kUnsupported, {"unsupported rope scaling type 'su'"});
}

TEST(HfConfigTiny, FalconAlibiHasNoRope) {
  const ModelConfig config = ParseHfConfig(R"({"model_type": "falcon", "hidden_size": 64,
      "num_attention_heads": 4, "num_hidden_layers": 2, "alibi": true, "bias": true,
      "multi_query": false, "new_decoder_architecture": false})");
  EXPECT_TRUE(config.gqa.alibi);
  EXPECT_EQ(config.gqa.num_kv_heads, 4);
  EXPECT_FALSE(config.RotatesLayer(0));
  EXPECT_FALSE(config.RotatesLayer(1));
}

// Llama4TextConfig's defaults: every 4th layer NoPE (full attention, temperature tuned), the
// others RoPE with chunked attention and the weightless L2 q/k norm; interleaved pairs.
TEST(HfConfigTiny, Llama4LayerKindsFollowNoRopeLayers) {
  json j = {{"model_type", "llama4_text"},
            {"hidden_size", 64},
            {"num_attention_heads", 4},
            {"num_key_value_heads", 2},
            {"head_dim", 16},
            {"num_hidden_layers", 8},
            {"attention_chunk_size", 32},
            {"attn_temperature_tuning", 4},
            {"rms_norm_eps", 1e-5}};
  ModelConfig config = Parse(j);
  EXPECT_EQ(config.rope.pairing, RopePairing::kInterleaved);
  EXPECT_EQ(config.rope.theta, 500000.0);
  EXPECT_EQ(config.gqa.qk_norm, QkNorm::kL2);
  EXPECT_EQ(config.temperature.floor_scale, 8192.0);
  EXPECT_EQ(config.temperature.attn_scale, 0.1);
  for (int64_t layer = 0; layer < 8; ++layer) {
    const bool nope = (layer + 1) % 4 == 0;
    EXPECT_EQ(config.RotatesLayer(layer), !nope) << layer;
    EXPECT_EQ(config.ChunkForLayer(layer), nope ? 0 : 32) << layer;
  }
  j["no_rope_layers"] = {1, 0, 1, 1, 1, 1, 1, 0};
  j["layer_types"] = {"chunked_attention", "full_attention",    "full_attention",
                      "chunked_attention", "chunked_attention", "chunked_attention",
                      "chunked_attention", "full_attention"};
  j["use_qk_norm"] = false;
  j["attn_temperature_tuning"] = false;
  config = Parse(j);
  EXPECT_FALSE(config.RotatesLayer(1));
  EXPECT_TRUE(config.RotatesLayer(3));
  EXPECT_EQ(config.ChunkForLayer(2), 0);
  EXPECT_EQ(config.ChunkForLayer(3), 32);
  EXPECT_EQ(config.gqa.qk_norm, QkNorm::kNone);
  EXPECT_EQ(config.temperature.floor_scale, 0.0);
  j["no_rope_layers"] = {1, 0, 2, 1, 1, 1, 1, 0};
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"no_rope_layers"});
  j["no_rope_layers"] = {1, 0};
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"no_rope_layers"});
  j.erase("no_rope_layers");
  j["layer_types"][0] = "sliding_attention";
  ExpectError([&] { Parse(j); }, ErrorKind::kUnsupported, {"layer_types", "sliding_attention"});
}

TEST(HfConfigErrors, LongropeListsAndLengthsAreChecked) {
  json j = ReadJson("tiny-phi3.json");
  j["rope_scaling"]["short_factor"].erase(0);
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument,
              {"short_factor and long_factor need rotary_dim / 2 = 12 entries each, got 11"});
  j = ReadJson("tiny-phi3.json");
  j["rope_scaling"]["long_factor"][3] = "x";
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"long_factor", "a number"});
  j = ReadJson("tiny-phi3.json");
  j["rope_scaling"]["long_factor"][3] = -1.0;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"long_factor", "> 0"});
  j = ReadJson("tiny-phi3.json");
  j["rope_scaling"].erase("long_factor");
  ExpectError([&] { Parse(j); }, ErrorKind::kNotFound, {"long_factor"});
  j = ReadJson("tiny-phi3.json");
  j["rope_scaling"]["original_max_position_embeddings"] = 512;  // the top level says 256
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"disagree"});
  j = ReadJson("tiny-phi3.json");
  j["rope_scaling"]["factor"] = 8.0;  // transformers 4 and 5 would use different ratios
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"transformers versions disagree"});
  j["rope_scaling"]["attention_factor"] = 1.1;  // given: the ratio no longer matters
  EXPECT_DOUBLE_EQ(Parse(j).rope.scaling.attention_factor, 1.1);
  j = ReadJson("tiny-qwen2.json");
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}, {"short_factor", {1.0}}};
  ExpectError([&] { Parse(j); }, ErrorKind::kUnsupported, {"short_factor"});
}

TEST(HfConfigTiny, MiniCpm3IsMlaWithRotateHalfLongrope) {
  json j = ReadJson("tiny-minicpm3.json");
  ModelConfig config = Parse(j);
  EXPECT_EQ(config.kind, AttentionKind::kMla);
  EXPECT_EQ(config.mla.v_head_dim, 32);  // hidden / heads
  EXPECT_EQ(config.mla.q_lora_rank, 48);
  EXPECT_EQ(config.rope.pairing, RopePairing::kRotateHalf);
  EXPECT_EQ(config.rope.rotary_dim, 16);
  const RopeScaling& s = config.rope.scaling;
  EXPECT_EQ(s.original_max_position_embeddings, 256);
  EXPECT_DOUBLE_EQ(s.attention_factor, std::sqrt(1.0 + std::log(2.0) / std::log(256.0)));
  // max_position_embeddings 512 > L: MiniCPM's cos/sin table is built long from the start.
  EXPECT_EQ(s.short_factor, s.long_factor);
  EXPECT_DOUBLE_EQ(SoftmaxScale(config), 1.0 / std::sqrt(32.0));
  j["max_position_embeddings"] = 256;
  config = Parse(j);
  EXPECT_NE(config.rope.scaling.short_factor, config.rope.scaling.long_factor);
  EXPECT_DOUBLE_EQ(config.rope.scaling.attention_factor, 1.0);
  j["v_head_dim"] = 16;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"v_head_dim", "MiniCPM3"});
  j.erase("v_head_dim");
  j["rope_scaling"]["attention_factor"] = 1.2;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"attention_factor", "MiniCPM3"});
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ExpectError([&] { Parse(j); }, ErrorKind::kUnsupported, {"minicpm3", "longrope"});
}

TEST(HfConfigErrors, FactorWithoutType) {
  json j = ReadJson("tiny-llama31.json");
  j["rope_scaling"] = {{"factor", 2.0}};
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"rope_scaling", "type"});
}

TEST(HfConfigErrors, HeadsNotDivisibleByKvHeads) {
  json j = ReadJson("llama-3.1-8b.json");
  j["num_key_value_heads"] = 5;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument,
              {"num_attention_heads (32) is not divisible by num_key_value_heads (5)"});
}

TEST(HfConfigErrors, HiddenNotDivisibleWithoutHeadDim) {
  json j = ReadJson("tiny-mistral.json");
  j["num_attention_heads"] = 3;
  j["num_key_value_heads"] = 1;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"head_dim", "hidden_size"});
}

TEST(HfConfigErrors, OddOrTooWideRotary) {
  json j = ReadJson("tiny-llama31.json");
  j["partial_rotary_factor"] = 13.0 / 32.0;  // 13 coordinates: cannot pair
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"partial_rotary_factor"});
  j["partial_rotary_factor"] = 0.3;  // 9.6 coordinates
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"partial_rotary_factor"});
  j["partial_rotary_factor"] = 1.5;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"partial_rotary_factor"});

  j = ReadJson("tiny-llama31.json");
  j["head_dim"] = 31;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument,
              {"rotary_dim (31)", "even", "head_dim"});

  json d = ReadJson("tiny-deepseek-v3.json");
  d["qk_rope_head_dim"] = 15;
  ExpectError([&] { Parse(d); }, ErrorKind::kInvalidArgument, {"qk_rope_head_dim (15)", "even"});

  ModelConfig c = SmallGqa();
  c.rope.rotary_dim = 15;
  ExpectError([&] { ValidateConfig(c); }, ErrorKind::kInvalidArgument, {"rotary_dim (15)", "even"});
  c.rope.rotary_dim = 18;
  ExpectError([&] { ValidateConfig(c); }, ErrorKind::kInvalidArgument,
              {"rotary_dim (18)", "head_dim (16)"});
  c.rope.rotary_dim = 0;
  ExpectError([&] { ValidateConfig(c); }, ErrorKind::kInvalidArgument, {"rotary_dim"});
}

TEST(HfConfigErrors, MissingRequiredKeys) {
  json j = ReadJson("tiny-llama31.json");
  j.erase("hidden_size");
  try {
    Parse(j);
    ADD_FAILURE() << "expected attn::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_STREQ(e.what(), "config.json: missing key 'hidden_size'");
  }
  j = ReadJson("tiny-llama31.json");
  j["rope_scaling"].erase("low_freq_factor");
  ExpectError([&] { Parse(j); }, ErrorKind::kNotFound, {"'rope_scaling.low_freq_factor'"});
  j = ReadJson("tiny-llama31.json");
  j["rope_scaling"].erase("factor");
  ExpectError([&] { Parse(j); }, ErrorKind::kNotFound, {"'rope_scaling.factor'"});
  json d = ReadJson("tiny-deepseek-v3.json");
  d.erase("kv_lora_rank");
  ExpectError([&] { Parse(d); }, ErrorKind::kNotFound, {"'kv_lora_rank'"});
  d = ReadJson("tiny-deepseek-v3.json");
  d["num_hidden_layers"] = nullptr;
  ExpectError([&] { Parse(d); }, ErrorKind::kNotFound, {"'num_hidden_layers'"});
}

TEST(HfConfigErrors, WrongValueTypes) {
  json j = ReadJson("tiny-llama31.json");
  j["hidden_size"] = "256";
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"'hidden_size'", "integer"});
  j = ReadJson("tiny-llama31.json");
  j["rope_scaling"]["factor"] = "8";
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"'rope_scaling.factor'"});
  j = ReadJson("tiny-llama31.json");
  j["rope_scaling"] = "llama3";
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"'rope_scaling'", "object"});
  j = ReadJson("tiny-llama31.json");
  j["attention_bias"] = "false";
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"'attention_bias'", "boolean"});
  j = ReadJson("tiny-llama31.json");
  j["rope_theta"] = "500000";
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"'rope_theta'"});
  json d = ReadJson("tiny-deepseek-v3.json");
  d["rope_interleave"] = 1;
  ExpectError([&] { Parse(d); }, ErrorKind::kInvalidArgument, {"'rope_interleave'"});
}

TEST(HfConfigErrors, MalformedJson) {
  ExpectError([] { ParseHfConfig("{\"model_type\": \"llama\", "); }, ErrorKind::kInvalidArgument,
              {"config.json", "JSON"});
  ExpectError([] { ParseHfConfig(""); }, ErrorKind::kInvalidArgument, {"JSON"});
  ExpectError([] { ParseHfConfig("[1, 2]"); }, ErrorKind::kInvalidArgument, {"object"});
}

TEST(HfConfigErrors, DeepSeekAttentionBias) {
  json d = ReadJson("tiny-deepseek-v3.json");
  d["attention_bias"] = true;
  ExpectError([&] { Parse(d); }, ErrorKind::kUnsupported, {"attention_bias", "deepseek_v3"});
}

TEST(HfConfigErrors, BadScalingValues) {
  json j = ReadJson("tiny-deepseek-v3.json");
  j["rope_scaling"]["factor"] = 0.5;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"factor"});
  j["rope_scaling"]["factor"] = 0;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"factor"});
  j = ReadJson("tiny-deepseek-v3.json");
  j["rope_scaling"]["beta_slow"] = 0;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"beta_slow"});
  j = ReadJson("tiny-llama31.json");
  j["rope_scaling"]["high_freq_factor"] = 0.5;  // below low_freq_factor (1)
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"high_freq_factor"});
  j["rope_scaling"]["high_freq_factor"] = 1.0;  // equal: no blended band (Llama 4 Scout)
  EXPECT_EQ(Parse(j).rope.scaling.high_freq_factor, 1.0);
  j = ReadJson("tiny-llama31.json");
  j["rope_scaling"]["original_max_position_embeddings"] = 0;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"original_max_position_embeddings"});
  j = ReadJson("tiny-llama31.json");
  j["rope_theta"] = 0.0;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"rope_theta"});
}

TEST(HfConfigErrors, NonPositiveSizesAndNegativeWindow) {
  json j = ReadJson("tiny-mistral.json");
  j["sliding_window"] = -1;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"sliding_window"});
  j = ReadJson("tiny-mistral.json");
  j["num_hidden_layers"] = 0;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"num_hidden_layers"});
  j = ReadJson("tiny-mistral.json");
  j["num_attention_heads"] = 0;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"num_attention_heads"});
  j = ReadJson("tiny-mistral.json");
  j["num_key_value_heads"] = 0;
  ExpectError([&] { Parse(j); }, ErrorKind::kInvalidArgument, {"num_key_value_heads"});
  json d = ReadJson("tiny-deepseek-v3.json");
  d["v_head_dim"] = 0;
  ExpectError([&] { Parse(d); }, ErrorKind::kInvalidArgument, {"v_head_dim"});
  d = ReadJson("tiny-deepseek-v3.json");
  d["q_lora_rank"] = -3;
  ExpectError([&] { Parse(d); }, ErrorKind::kInvalidArgument, {"q_lora_rank"});
}

TEST(HfConfigErrors, LoadReportsPathAndIoFailures) {
  ExpectError([] { LoadHfConfig(ConfigPath("does-not-exist.json")); }, ErrorKind::kIo,
              {"does-not-exist.json"});
  ExpectError([] { LoadHfConfig(std::string(ATTN_SOURCE_DIR) + "/configs"); }, ErrorKind::kIo,
              {"directory"});
}

// ---------------------------------------------------------------- ModelConfig rules

TEST(ModelConfigRules, ValidHandBuiltConfigPasses) { EXPECT_NO_THROW(ValidateConfig(SmallGqa())); }

TEST(ModelConfigRules, SlidingLayersMustCoverEveryLayer) {
  ModelConfig c = SmallGqa();
  c.sliding_window = 4;
  c.sliding_layers = {true, false, true};
  ExpectError([&] { ValidateConfig(c); }, ErrorKind::kInvalidArgument, {"num_hidden_layers"});
  c.sliding_layers = {true, false};
  EXPECT_NO_THROW(ValidateConfig(c));
  EXPECT_EQ(c.WindowForLayer(0), 4);
  EXPECT_EQ(c.WindowForLayer(1), 0);
  ExpectError([&] { c.WindowForLayer(2); }, ErrorKind::kInvalidArgument, {"layer 2"});
  ExpectError([&] { c.WindowForLayer(-1); }, ErrorKind::kInvalidArgument, {"layer -1"});
}

TEST(ModelConfigRules, YarnRequiresOriginalLength) {
  ModelConfig c = SmallGqa();
  c.rope.scaling.type = RopeScalingType::kYarn;
  c.rope.scaling.factor = 4.0;
  ExpectError([&] { ValidateConfig(c); }, ErrorKind::kInvalidArgument,
              {"original_max_position_embeddings"});
  c.rope.scaling.original_max_position_embeddings = 64;
  EXPECT_NO_THROW(ValidateConfig(c));
}

TEST(ModelConfigRules, YarnMscale) {
  EXPECT_EQ(YarnMscale(1.0, 1.0), 1.0);
  EXPECT_EQ(YarnMscale(0.5, 1.0), 1.0);
  EXPECT_NEAR(YarnMscale(40.0, 1.0), 1.368888, 1e-6);
  EXPECT_NEAR(YarnMscale(40.0, 1.0) * YarnMscale(40.0, 1.0), 1.873854, 1e-6);
  EXPECT_DOUBLE_EQ(YarnMscale(40.0, 0.707), 0.1 * 0.707 * std::log(40.0) + 1.0);
  EXPECT_EQ(YarnMscale(40.0, 0.0), 1.0);
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

ModelConfig ParseText(const std::string& text) { return ParseHfConfig(text); }

// The GQA families added with their attention variants (docs/semantics.md §1): the keys that
// change the math, with the defaults of each family's HF configuration class.
TEST(HfConfigFamilies, Qwen3AndOlmo2QkNorms) {
  const std::string dims = R"("hidden_size": 64, "num_attention_heads": 4,
      "num_key_value_heads": 2, "head_dim": 32, "num_hidden_layers": 4)";
  const ModelConfig qwen3 = ParseText(R"({"model_type": "qwen3", )" + dims + "}");
  EXPECT_EQ(qwen3.gqa.qk_norm, QkNorm::kPerHead);
  EXPECT_EQ(qwen3.gqa.qk_norm_eps, 1e-6);
  EXPECT_FALSE(qwen3.gqa.qkv_bias);
  EXPECT_EQ(qwen3.WindowForLayer(3), 0);
  const ModelConfig moe =
      ParseText(R"({"model_type": "qwen3_moe", "rms_norm_eps": 1e-5, )" + dims + "}");
  EXPECT_EQ(moe.gqa.qk_norm, QkNorm::kPerHead);
  EXPECT_EQ(moe.gqa.qk_norm_eps, 1e-5);
  const ModelConfig olmo2 = ParseText(R"({"model_type": "olmo2", )" + dims + "}");
  EXPECT_EQ(olmo2.gqa.qk_norm, QkNorm::kWholeProjection);
  EXPECT_EQ(olmo2.gqa.qk_norm_eps, 1e-5);  // Olmo2Config's default
  // The norms' tensors are part of the layer, at their widths.
  bool q_norm = false;
  for (const WeightSpec& spec : AttentionWeightSpecs(olmo2)) {
    if (spec.name == "q_norm.weight") {
      q_norm = true;
      EXPECT_EQ(spec.shape, (Shape{4 * 32}));
    }
  }
  EXPECT_TRUE(q_norm);
}

TEST(HfConfigFamilies, GraniteScaleMixtralAndQwen2MoeWindows) {
  const std::string dims = R"("hidden_size": 64, "num_attention_heads": 4,
      "num_key_value_heads": 2, "num_hidden_layers": 6)";
  const ModelConfig granite =
      ParseText(R"({"model_type": "granite", "attention_multiplier": 0.0078125, )" + dims + "}");
  EXPECT_DOUBLE_EQ(SoftmaxScale(granite), 0.0078125);
  EXPECT_DOUBLE_EQ(SoftmaxScale(ParseText(R"({"model_type": "granite", )" + dims + "}")), 1.0);
  EXPECT_THROW(ParseText(R"({"model_type": "granite", "attention_multiplier": 0, )" + dims + "}"),
               Error);
  EXPECT_EQ(ParseText(R"({"model_type": "mixtral", )" + dims + "}").sliding_window, 0);
  EXPECT_EQ(ParseText(R"({"model_type": "mixtral", "sliding_window": 64, )" + dims + "}")
                .WindowForLayer(5),
            64);
  const ModelConfig qwen2_moe =
      ParseText(R"({"model_type": "qwen2_moe", "use_sliding_window": true, "sliding_window": 16,
                   "max_window_layers": 4, )" +
                dims + "}");
  EXPECT_TRUE(qwen2_moe.gqa.qkv_bias);
  EXPECT_FALSE(qwen2_moe.gqa.o_bias);
  // Qwen2MoeConfig: even layers below max_window_layers slide.
  const std::vector<int64_t> windows = {16, 0, 16, 0, 0, 0};
  for (int64_t layer = 0; layer < 6; ++layer) {
    EXPECT_EQ(qwen2_moe.WindowForLayer(layer), windows[static_cast<size_t>(layer)]) << layer;
  }
  EXPECT_FALSE(
      ParseText(R"({"model_type": "qwen2_moe", "qkv_bias": false, )" + dims + "}").gqa.qkv_bias);
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

TEST(HfConfigFamilies, Gemma2AndGptOss) {
  const std::string dims = R"("hidden_size": 64, "num_attention_heads": 4,
      "num_key_value_heads": 2, "num_hidden_layers": 4)";
  const ModelConfig gemma2 = ParseHfConfig(R"({"model_type": "gemma2", )" + dims + "}");
  EXPECT_EQ(gemma2.gqa.head_dim, 256);                 // Gemma2Config's default
  EXPECT_DOUBLE_EQ(SoftmaxScale(gemma2), 1.0 / 16.0);  // query_pre_attn_scalar 256
  EXPECT_EQ(gemma2.attn_logit_softcapping, 50.0);
  EXPECT_EQ(gemma2.WindowForLayer(0), 4096);
  EXPECT_EQ(gemma2.WindowForLayer(1), 0);
  const ModelConfig uncapped = ParseHfConfig(
      R"({"model_type": "gemma2", "attn_logit_softcapping": null, "head_dim": 16, )" + dims + "}");
  EXPECT_EQ(uncapped.attn_logit_softcapping, 0.0);

  const ModelConfig oss = ParseHfConfig(R"({"model_type": "gpt_oss", )" + dims + "}");
  EXPECT_EQ(oss.gqa.head_dim, 64);
  EXPECT_TRUE(oss.gqa.attention_sinks);
  EXPECT_TRUE(oss.gqa.qkv_bias);
  EXPECT_TRUE(oss.gqa.o_bias);
  EXPECT_EQ(oss.WindowForLayer(2), 128);
  EXPECT_EQ(oss.WindowForLayer(3), 0);
  EXPECT_EQ(oss.rope.scaling.type, RopeScalingType::kYarn);  // GptOssConfig's default RoPE
  EXPECT_EQ(oss.rope.scaling.factor, 32.0);
  EXPECT_FALSE(oss.rope.scaling.truncate);
  EXPECT_EQ(oss.rope.theta, 150000.0);
  bool sinks = false;
  for (const WeightSpec& spec : AttentionWeightSpecs(oss)) {
    if (spec.name == "sinks") sinks = spec.shape == Shape{4};
  }
  EXPECT_TRUE(sinks);
}

TEST(HfConfigFamilies, SoftCappingOnMlaIsRefused) {
  json j = ReadJson("tiny-deepseek-v3.json");
  j["attn_logit_softcapping"] = 30.0;
  ExpectError([&] { Parse(j); }, ErrorKind::kUnsupported, {"attn_logit_softcapping"});
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

TEST(HfConfigFamilies, Gemma3LocalAndGlobalLayers) {
  const ModelConfig c = ParseHfConfig(R"({"model_type": "gemma3_text", "hidden_size": 64,
      "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 12,
      "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 512})");
  EXPECT_EQ(c.gqa.head_dim, 256);
  EXPECT_EQ(c.gqa.qk_norm, QkNorm::kPerHead);
  EXPECT_TRUE(c.gqa.qk_norm_unit_offset);
  EXPECT_DOUBLE_EQ(SoftmaxScale(c), 1.0 / 16.0);
  EXPECT_EQ(c.attn_logit_softcapping, 0.0);
  // Every sixth layer (5, 11) is global: no window, rope_theta 1e6 with linear scaling; the
  // others are local: a 512-token window, rope_local_base_freq 10000, no scaling.
  for (int64_t layer = 0; layer < 12; ++layer) {
    EXPECT_EQ(c.WindowForLayer(layer), layer % 6 == 5 ? 0 : 512) << layer;
  }
  EXPECT_TRUE(c.sliding_rope_differs);
  EXPECT_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rope.scaling.type, RopeScalingType::kLinear);
  EXPECT_EQ(c.sliding_rope.theta, 10000.0);
  EXPECT_EQ(c.sliding_rope.scaling.type, RopeScalingType::kNone);
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

TEST(HfConfigFamilies, GlmHalfWidthInterleavedRope) {
  const ModelConfig glm = ParseHfConfig(R"({"model_type": "glm4", "hidden_size": 64,
      "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2})");
  EXPECT_EQ(glm.gqa.head_dim, 128);
  EXPECT_EQ(glm.rope.rotary_dim, 64);  // partial_rotary_factor 0.5 by default
  EXPECT_EQ(glm.rope.pairing, RopePairing::kInterleaved);
  EXPECT_TRUE(glm.gqa.qkv_bias);
  EXPECT_FALSE(glm.gqa.o_bias);
  const ModelConfig full = ParseHfConfig(R"({"model_type": "glm", "hidden_size": 64,
      "num_attention_heads": 4, "head_dim": 16, "partial_rotary_factor": 1.0,
      "attention_bias": false, "num_hidden_layers": 2})");
  EXPECT_EQ(full.rope.rotary_dim, 16);
  EXPECT_FALSE(full.gqa.qkv_bias);
}

TEST(HfConfigFamilies, GptOssAbsentAndNullKeys) {
  const std::string dims = R"("hidden_size": 96, "num_attention_heads": 16,
      "num_hidden_layers": 2)";
  const ModelConfig absent = ParseHfConfig(R"({"model_type": "gpt_oss", )" + dims + "}");
  EXPECT_EQ(absent.gqa.num_kv_heads, 8);
  EXPECT_EQ(absent.gqa.head_dim, 64);
  const ModelConfig null = ParseHfConfig(
      R"({"model_type": "gpt_oss", "num_key_value_heads": null, "head_dim": null, )" + dims + "}");
  EXPECT_EQ(null.gqa.num_kv_heads, 16);
  EXPECT_EQ(null.gqa.head_dim, 6);
}

}  // namespace
}  // namespace attn
