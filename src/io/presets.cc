// SPDX-License-Identifier: Apache-2.0
// The presets: attention-relevant keys of each model's public config.json, copied value by
// value (MLP, MoE, vocabulary and dtype keys are left out because ParseHfConfig ignores them).
// Sources: the config.json files of meta-llama/Llama-2-7b-hf, Meta-Llama-3-8B, Llama-3.1-8B,
// Meta-Llama-3-70B, mistralai/Mistral-7B-v0.1, Qwen/Qwen2.5-7B, tiiuae/falcon-7b,
// deepseek-ai/DeepSeek-V2-Lite, DeepSeek-V2, DeepSeek-V3 and moonshotai/Kimi-K2-Instruct;
// Qwen/Qwen3-8B and Qwen3-30B-A3B as vendored in configs/qwen3-8b.json and
// configs/qwen3-30b-a3b.json (copied from citsjtu2020/LLM-Prof, sglang/Model_Config.md, which
// reproduces the published files), and openai/gpt-oss-20b as vendored in configs/gpt-oss-20b.json
// (copied from jihengzhang/jihz-gpt-oss-20b, gpt-oss-20b/config.json), and
// microsoft/Phi-3.5-mini-instruct as vendored in configs/phi-3.5-mini-instruct.json (transcribed
// from a public copy that cites huggingface.co/microsoft/Phi-3.5-mini-instruct config.json; its
// 48 short and 48 long factors are float32 values printed in full);
// mistralai/Mixtral-8x7B-v0.1 as vendored in configs/mixtral-8x7b-v0.1.json (copied from
// NVIDIA/TensorRT-LLM, tests/unittest/_torch/modeling/test_modeling_mixtral.py,
// MIXTRAL_8X7B_CONFIG, checked key by key against three more public copies of the file); and
// google/gemma-2-2b-it as vendored in configs/gemma-2-2b-it.json (copied from a public copy whose
// comment reads "copy https://huggingface.co/google/gemma-2-2b-it/blob/main/config.json here";
// its attention keys equal transformers' Gemma2Config() defaults, which
// tests/python_torch/test_presets_vs_transformers.py checks); and allenai/OLMo-2-1124-7B as
// vendored in configs/olmo-2-1124-7b.json (transcribed from a public copy headed "config:
// https://huggingface.co/allenai/OLMo-2-1124-7B/blob/main/config.json"; every attention key agrees
// with NVIDIA-NeMo/Megatron-Bridge, tests/unit_tests/models/olmo2/test_olmo2_bridge.py, "Mirror of
// allenai/OLMo-2-1124-7B/config.json", and with Lightning-AI/litgpt's OLMo-2-1124-7B entry);
// ibm-granite/granite-3.3-8b-instruct as vendored in configs/granite-3.3-8b-instruct.json
// (transcribed from a public dump of published config.json files, under the heading
// "# ibm-granite/granite-3.3-8b-instruct"; the same dump's OLMo-2 7B entry has the attention keys
// of configs/olmo-2-1124-7b.json). tests/cpp/presets_test.cc parses those files and compares.
// Qwen/Qwen1.5-MoE-A2.7B-Chat is not vendored: its attention keys are those shared by two public
// copies, the full config.json of Qwen/Qwen1.5-MoE-A2.7B-Chat-GPTQ-Int4 (a quantized copy of the
// same model) and a planner's "Qwen/Qwen1.5-MoE-A2.7B-Chat (config.json, fields the planner
// reads)"; rope_theta and rms_norm_eps are from the former alone. google/gemma-3-270m as
// vendored in configs/gemma-3-270m.json (transcribed from circuit-tracer's tests,
// gemma_3_config_dict, a copy of that model's config.json used beside
// AutoConfig.from_pretrained("google/gemma-3-270m"), less the "_name_or_path" the test sets; its
// attention keys agree with two more public copies of the 270m geometry).
// THUDM/glm-4-9b-chat-hf as vendored in configs/glm-4-9b-chat-hf.json: the transformers-format
// config.json uploaded to THUDM/glm-4-9b-chat at commit 9918c3f (huggingface.co page "661 Bytes";
// the size of the vendored file), later published as THUDM/glm-4-9b-chat-hf; every
// attention key agrees with a copy of glm-4-9b-chat-hf's file (genai-archive/glm-4-9b-chat-hf-fp8,
// which adds the partial_rotary_factor 0.5 the file leaves to GlmConfig) and with transformers'
// GlmConfig() defaults, which its docstring gives as glm-4-9b-chat's and
// tests/python_torch/test_presets_vs_transformers.py checks. Its rope_theta 10000.0 is what the
// file says; the same repo's remote-code config (model_type chatglm) says rope_ratio 500, a base
// of 5e6, and attn follows the transformers-format file as transformers does.
// tiiuae/falcon-rw-1b as vendored in configs/falcon-rw-1b.json: the in-library config.json of
// tiiuae/falcon-rw-1b ("Move to in-library checkpoint", 1.05 kB), as copied whole by
// Keynote-Technology/TinyKAI-1B-v0.1 (1,046 bytes, the vendored file's size); every key but
// auto_map and hidden_dropout is in the diff of tiiuae/falcon-rw-1b commit f19979f, and the keys
// agree with the model card (ALiBi; 24 layers, d_model 2048, head_dim 64) and with fine-tunes
// saved from it (franco-rojas/falcon-rw-1b-finetuned-tfmviu, yutaozhu94/INTERS-Falcon-1b).
// THUDM/GLM-4-9B-0414 (model_type glm4; also published as zai-org/GLM-4-9B-0414) is not
// vendored: no complete public copy of its config.json was found. Its attention keys are the
// ones these public copies agree on: a C++ engine's GLM-4-0414 header that cites
// zai-org/GLM-4-9B-0414/config.json (hidden 4096, 40 layers, 32 query and 2 kv heads, head_dim
// 128, attention_bias true, partial_rotary_factor 0.5, rope_theta 1e4, rms_norm_eps 1e-5); a
// research note reprinting the file's keys (max_position_embeddings 32768, attention_bias true,
// model_type glm4; sources huggingface.co/THUDM/GLM-4-9B-0414/blob/main/config.json and
// MindSpore's mirror of it); Xinference's glm4-0414 page (THUDM/GLM-4-9B-0414, context length
// 32768); and the config.json saved from a Glm4ForCausalLM fine-tune of that geometry
// (ccui46/hazardworld_per_chunk_act_glm_tokfix_diffPrompt_2000: every key here equal).
// tests/cpp/presets_test.cc checks the preset against those values, written out literally.
// meta-llama/Llama-4-Scout-17B-16E, the base model, is its config.json's text_config
// (model_type llama4_text). The Instruct model differs in RoPE (max_position_embeddings
// 10485760, llama3 scaling factor 16 with low/high_freq_factor 1 in the public copies of its
// text_config) and is not this preset. The repository is gated and no complete public copy of
// the file was found, so it is not vendored; its attention keys agree in three public copies: a
// dump of the Llama4Config loaded from meta-llama/Llama-4-Scout-17B-16E (transformers 4.51.0,
// "Total Trainable Params: 109,676,279,296"), the config.json of a text-only fine-tune of that
// model quoted in vllm-project/vllm issue #20581, and a test fixture that mirrors
// unsloth/Llama-4-Scout-17B-16E's text_config (which has no attn_temperature_tuning, floor_scale
// or attn_scale; the other two give 4, 8192 and 0.1). That fixture gives "no_rope_layers": [],
// which Llama4TextConfig expands with no_rope_layer_interval 4 into the 48 entries the other two
// print and the preset spells out (presets_test checks that the two parse alike).
// openbmb/MiniCPM3-4B is not vendored: the public views of its config.json found (the
// huggingface.co page of its refs/pr/8 revision, and the copy openbmb/MiniCPM3-RAG-LoRA
// created with "_name_or_path": "openbmb/MiniCPM3-4B", 1,898 bytes in 41 lines) stop within
// rope_scaling. They show every key here up to rope_scaling's type, its 16 long_factor values
// and the first 10 short_factor values; the rest is what two public transcriptions of the
// file's values agree on: UbiquitousLearning/mllm src/models/minicpm3/configuration_minicpm3.hpp
// (short factors equal to the long ones, original_max_position_embeddings 32768, rope_theta 10000)
// and Ascend MindSpeed-LLM's MiniCPM3-4B scripts (SHORT_FACTOR equal to LONG_FACTOR,
// --rope-scaling-original-max-position-embeddings 32768). model_type is MiniCPM3Config's (the
// lines seen name the class through auto_map), and rope_theta is left to the parser's default
// 10000, which is MiniCPM3Config's and mllm's. transformers 5's MiniCPM3Config, whose defaults
// it says "match the openbmb/MiniCPM3-4B checkpoint", has the same sizes, ranks, head widths,
// max_position_embeddings and rms_norm_eps.
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
      {"phi-3.5-mini", R"({"model_type": "phi3", "hidden_size": 3072,
        "num_attention_heads": 32, "num_key_value_heads": 32, "num_hidden_layers": 32,
        "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 262144,
        "rope_scaling": {"type": "longrope",
          "long_factor": [1.0800000429153442, 1.1100000143051147, 1.1399999856948853, 1.340000033378601, 1.5899999141693115, 1.600000023841858, 1.6200000047683716, 2.620000123977661, 3.2300000190734863, 3.2300000190734863, 4.789999961853027, 7.400000095367432, 7.700000286102295, 9.09000015258789, 12.199999809265137, 17.670000076293945, 24.46000099182129, 28.57000160217285, 30.420001983642578, 30.840002059936523, 32.590003967285156, 32.93000411987305, 42.320003509521484, 44.96000289916992, 50.340003967285156, 50.45000457763672, 57.55000305175781, 57.93000411987305, 58.21000289916992, 60.1400032043457, 62.61000442504883, 62.62000274658203, 62.71000289916992, 63.1400032043457, 63.1400032043457, 63.77000427246094, 63.93000411987305, 63.96000289916992, 63.970001220703125, 64.02999877929688, 64.06999969482422, 64.08000183105469, 64.12000274658203, 64.41000366210938, 64.4800033569336, 64.51000213623047, 64.52999877929688, 64.83999633789062],
          "short_factor": [1.0, 1.0199999809265137, 1.0299999713897705, 1.0299999713897705, 1.0499999523162842, 1.0499999523162842, 1.0499999523162842, 1.0499999523162842, 1.0499999523162842, 1.0699999332427979, 1.0999999046325684, 1.1099998950958252, 1.1599998474121094, 1.1599998474121094, 1.1699998378753662, 1.2899998426437378, 1.339999794960022, 1.679999828338623, 1.7899998426437378, 1.8199998140335083, 1.8499997854232788, 1.8799997568130493, 1.9099997282028198, 1.9399996995925903, 1.9899996519088745, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0799996852874756, 2.0899996757507324, 2.189999580383301, 2.2199995517730713, 2.5899994373321533, 2.729999542236328, 2.749999523162842, 2.8399994373321533]}})"},
      {"mixtral-8x7b", R"({"model_type": "mixtral", "hidden_size": 4096,
        "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "sliding_window": null})"},
      {"gemma-2-2b", R"({"model_type": "gemma2", "hidden_size": 2304,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "num_hidden_layers": 26, "max_position_embeddings": 8192, "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0, "attention_bias": false, "query_pre_attn_scalar": 256,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "sliding_window": 4096})"},
      {"olmo-2-7b", R"({"model_type": "olmo2", "hidden_size": 4096,
        "num_attention_heads": 32, "num_key_value_heads": 32, "num_hidden_layers": 32,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "rope_theta": 500000.0,
        "rope_scaling": null, "attention_bias": false})"},
      {"granite-3.3-8b", R"({"model_type": "granite", "hidden_size": 4096,
        "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 40,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 10000000.0,
        "rope_scaling": null, "attention_bias": false, "attention_multiplier": 0.0078125})"},
      {"qwen1.5-moe-a2.7b-chat", R"({"model_type": "qwen2_moe", "hidden_size": 2048,
        "num_attention_heads": 16, "num_key_value_heads": 16, "num_hidden_layers": 24,
        "max_position_embeddings": 32768, "max_window_layers": 21, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": false})"},
      {"gemma-3-270m", R"({"model_type": "gemma3_text", "hidden_size": 640,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
        "num_hidden_layers": 18, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": null,
        "attention_bias": false, "query_pre_attn_scalar": 256, "attn_logit_softcapping": null,
        "sliding_window": 512, "use_bidirectional_attention": false,
        "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]})"},
      {"glm-4-9b-chat-hf", R"({"model_type": "glm", "hidden_size": 4096,
        "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
        "num_hidden_layers": 40, "max_position_embeddings": 131072, "rms_norm_eps": 1.5625e-07,
        "rope_theta": 10000.0, "attention_bias": true})"},
      {"falcon-rw-1b", R"({"model_type": "falcon", "hidden_size": 2048,
        "num_attention_heads": 32, "num_hidden_layers": 24, "multi_query": false,
        "new_decoder_architecture": false, "alibi": true, "bias": true,
        "parallel_attn": false, "layer_norm_epsilon": 1e-05})"},
      {"glm-4-9b-0414", R"({"model_type": "glm4", "hidden_size": 4096,
        "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
        "num_hidden_layers": 40, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
        "partial_rotary_factor": 0.5, "rope_theta": 10000.0, "attention_bias": true})"},
      {"llama-4-scout-17b-16e", R"({"model_type": "llama4_text", "hidden_size": 5120,
        "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
        "num_hidden_layers": 48, "max_position_embeddings": 262144, "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "attention_bias": false, "attention_chunk_size": 8192, "use_qk_norm": true,
        "attn_temperature_tuning": 4, "floor_scale": 8192, "attn_scale": 0.1,
        "no_rope_layers": [1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0]})"},
      {"kimi-k2", R"({"model_type": "kimi_k2", "hidden_size": 7168,
        "num_attention_heads": 64, "num_key_value_heads": 64, "num_hidden_layers": 61,
        "max_position_embeddings": 131072, "q_lora_rank": 1536, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "rms_norm_eps": 1e-06, "rope_theta": 50000.0, "attention_bias": false,
        "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                         "type": "yarn"}})"},
      {"minicpm3-4b", R"({"model_type": "minicpm3", "hidden_size": 2560,
        "num_attention_heads": 40, "num_key_value_heads": 40, "num_hidden_layers": 62,
        "max_position_embeddings": 32768, "q_lora_rank": 768, "kv_lora_rank": 256,
        "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "rms_norm_eps": 1e-05,
        "rope_scaling": {"type": "longrope",
          "long_factor": [1.0591234137867171, 1.1241891283591912, 1.2596935748670968, 1.5380380402321725, 2.093982484148734, 3.1446935121267696, 4.937952647693647, 7.524541999994549, 10.475458000005451, 13.062047352306353, 14.85530648787323, 15.906017515851266, 16.461961959767827, 16.740306425132907, 16.87581087164081, 16.940876586213285],
          "short_factor": [1.0591234137867171, 1.1241891283591912, 1.2596935748670968, 1.5380380402321725, 2.093982484148734, 3.1446935121267696, 4.937952647693647, 7.524541999994549, 10.475458000005451, 13.062047352306353, 14.85530648787323, 15.906017515851266, 16.461961959767827, 16.740306425132907, 16.87581087164081, 16.940876586213285],
          "original_max_position_embeddings": 32768}})"},
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
