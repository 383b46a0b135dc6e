// SPDX-License-Identifier: Apache-2.0
// The presets: attention-relevant keys of each model's public config.json, copied value by
// value (MLP, MoE, vocabulary and dtype keys are left out because ParseHfConfig ignores them).
// Sources: the config.json files of meta-llama/Llama-2-7b-hf, Meta-Llama-3-8B, Llama-3.1-8B,
// Meta-Llama-3-70B, mistralai/Mistral-7B-v0.1, Qwen/Qwen2.5-7B, tiiuae/falcon-7b,
// deepseek-ai/DeepSeek-V2-Lite, DeepSeek-V2, DeepSeek-V3 and moonshotai/Kimi-K2-Instruct;
// Qwen/Qwen3-8B and Qwen3-30B-A3B as vendored in configs/qwen3-8b.json and
// configs/qwen3-30b-a3b.json (copied from citsjtu2020/LLM-Prof, sglang/Model_Config.md, which
// reproduces the published files), and openai/gpt-oss-20b as vendored in configs/gpt-oss-20b.json
// (copied from jihengzhang/jihz-gpt-oss-20b, gpt-oss-20b/config.json); tests/cpp/presets_test.cc
// parses those files and compares.
#include "attn/presets.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>
#include <utility>

#include "attn/error.h"
#include "attn/hf_config.h"

namespace attn {
namespace {

struct Preset {
  const char* name;
  std::string json;
};

const std::vector<Preset>& Presets() {
  static const std::vector<Preset> presets = {
      {"llama-2-7b", R"({"model_type": "llama", "hidden_size": 4096,
        "num_attention_heads": 32, "num_key_value_heads": 32, "num_hidden_layers": 32,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "rope_scaling": null, "attention_bias": false})"},
      {"llama-3-8b", R"({"model_type": "llama", "hidden_size": 4096,
        "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": null, "attention_bias": false})"},
      {"llama-3.1-8b", R"({"model_type": "llama", "hidden_size": 4096,
        "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "attention_bias": false})"},
      {"llama-3-70b", R"({"model_type": "llama", "hidden_size": 8192,
        "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": null, "attention_bias": false})"},
      {"mistral-7b-v0.1", R"({"model_type": "mistral", "hidden_size": 4096,
        "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "sliding_window": 4096})"},
      {"qwen2.5-7b", R"({"model_type": "qwen2", "hidden_size": 3584,
        "num_attention_heads": 28, "num_key_value_heads": 4, "num_hidden_layers": 28,
        "max_position_embeddings": 131072, "max_window_layers": 28, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 131072, "use_sliding_window": false})"},
      {"falcon-7b", R"({"model_type": "falcon", "hidden_size": 4544,
        "num_attention_heads": 71, "num_hidden_layers": 32, "multi_query": true,
        "new_decoder_architecture": false, "alibi": false, "bias": false,
        "parallel_attn": true, "layer_norm_epsilon": 1e-05})"},
      {"deepseek-v2-lite", R"({"model_type": "deepseek_v2", "hidden_size": 2048,
        "num_attention_heads": 16, "num_key_value_heads": 16, "num_hidden_layers": 27,
        "max_position_embeddings": 163840, "q_lora_rank": null, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "rms_norm_eps": 1e-06, "rope_theta": 10000, "attention_bias": false,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                         "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                         "type": "yarn"}})"},
      {"deepseek-v2", R"({"model_type": "deepseek_v2", "hidden_size": 5120,
        "num_attention_heads": 128, "num_key_value_heads": 128, "num_hidden_layers": 60,
        "max_position_embeddings": 163840, "q_lora_rank": 1536, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "rms_norm_eps": 1e-06, "rope_theta": 10000, "attention_bias": false,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                         "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                         "type": "yarn"}})"},
      {"deepseek-v3", R"({"model_type": "deepseek_v3", "hidden_size": 7168,
        "num_attention_heads": 128, "num_key_value_heads": 128, "num_hidden_layers": 61,
        "max_position_embeddings": 163840, "q_lora_rank": 1536, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "rms_norm_eps": 1e-06, "rope_theta": 10000, "attention_bias": false,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                         "type": "yarn"}})"},
      {"qwen3-8b", R"({"model_type": "qwen3", "hidden_size": 4096,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "num_hidden_layers": 36, "max_position_embeddings": 40960, "max_window_layers": 36,
        "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000,
        "sliding_window": null, "use_sliding_window": false, "attention_bias": false})"},
      {"qwen3-30b-a3b", R"({"model_type": "qwen3_moe", "hidden_size": 2048,
        "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
        "num_hidden_layers": 48, "max_position_embeddings": 40960, "max_window_layers": 48,
        "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000.0,
        "sliding_window": null, "use_sliding_window": false, "attention_bias": false})"},
      {"gpt-oss-20b", R"({"model_type": "gpt_oss", "hidden_size": 2880,
        "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
        "num_hidden_layers": 24, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
        "rope_theta": 150000, "attention_bias": true, "sliding_window": 128,
        "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                         "original_max_position_embeddings": 4096, "rope_type": "yarn",
                         "truncate": false},
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"]})"},
      {"kimi-k2", R"({"model_type": "kimi_k2", "hidden_size": 7168,
        "num_attention_heads": 64, "num_key_value_heads": 64, "num_hidden_layers": 61,
        "max_position_embeddings": 131072, "q_lora_rank": 1536, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "rms_norm_eps": 1e-06, "rope_theta": 50000.0, "attention_bias": false,
        "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                         "type": "yarn"}})"},
  };
  return presets;
}

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

}  // namespace

std::vector<std::string> PresetNames() {
  std::vector<std::string> names;
  for (const Preset& preset : Presets()) names.emplace_back(preset.name);
  return names;
}

std::string PresetList() {
  std::string list;
  for (const Preset& preset : Presets()) {
    if (!list.empty()) list += ", ";
    list += preset.name;
  }
  return list;
}

const std::string& PresetConfigJson(const std::string& name) {
  const std::string wanted = Lower(name);
  for (const Preset& preset : Presets()) {
    if (wanted == preset.name) return preset.json;
  }
  throw Error(ErrorKind::kInvalidArgument,
              "unknown preset '" + name + "' (known presets: " + PresetList() + ")");
}

ModelConfig LoadPreset(const std::string& name) {
  const std::string& text = PresetConfigJson(name);
  try {
    return ParseHfConfig(text);
  } catch (const Error& e) {
    // A preset that does not parse is a bug in this file, not bad input.
    throw std::logic_error("preset '" + name + "' does not parse: " + e.what());
  }
}

}  // namespace attn
