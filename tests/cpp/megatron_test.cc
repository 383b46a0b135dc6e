// SPDX-License-Identifier: Apache-2.0
// Megatron-Core and Falcon names: the fused per-group qkv layout row by row, HF <-> Megatron
// round trips (bit-exact tensors, identical layer outputs), both norm spellings, the config
// namings both ways, and the messages for missing or misshapen tensors.
#include "attn/megatron.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "attn/error.h"
#include "attn/fused_qkv.h"
#include "attn/hf_config.h"
#include "attn/hf_weights.h"
#include "attn/layer_weights.h"
#include "attn/presets.h"
#include "test_util.h"

namespace attn {
namespace {

using testing::SmallGqaConfig;
using testing::SmallMlaConfig;

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("attn_megatron_test_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

bool BitEqual(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<size_t>(a.size())) == 0;
}

void ExpectSameWeights(const NamedTensors& a, const NamedTensors& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, tensor] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(BitEqual(tensor, b.at(name))) << name;
  }
}

Tensor Rows(int64_t rows, float first) {
  Tensor t({rows, 1});
  for (int64_t i = 0; i < rows; ++i) t.data()[i] = first + static_cast<float>(i);
  return t;
}

// H = 4, G = 2, d = 2: group 0 = q heads 0,1 then k0, v0; group 1 = q heads 2,3, k1, v1.
TEST(FusedQkvTest, RowOrderIsPerGroupQueriesThenKeyThenValue) {
  const Tensor q = Rows(8, 100.0f);  // q head h rows: 100+2h, 101+2h
  const Tensor k = Rows(4, 200.0f);
  const Tensor v = Rows(4, 300.0f);
  const Tensor fused = FuseGroupedQkv(q, k, v, 4, 2, 2);
  const float expected[] = {100, 101, 102, 103, 200, 201, 300, 301,
                            104, 105, 106, 107, 202, 203, 302, 303};
  ASSERT_EQ(fused.size(), 16);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(fused.data()[i], expected[i]) << "row " << i;
  const QkvParts parts = SplitGroupedQkv(fused, 4, 2, 2, "fused");
  EXPECT_TRUE(BitEqual(parts.q, q));
  EXPECT_TRUE(BitEqual(parts.k, k));
  EXPECT_TRUE(BitEqual(parts.v, v));
  // MQA (Falcon multi_query): all queries, then k, then v.
  const Tensor mqa = FuseGroupedQkv(q, Rows(2, 200.0f), Rows(2, 300.0f), 4, 1, 2);
  EXPECT_EQ(mqa.data()[8], 200.0f);
  EXPECT_EQ(mqa.data()[10], 300.0f);
  EXPECT_THROW(SplitGroupedQkv(Rows(15, 0.0f), 4, 2, 2, "fused"), Error);
}

// Writes `weights` under Megatron names, reads them back, and compares the layers' outputs.
void RoundTrip(const ModelConfig& config, MegatronNormNames names, DType dtype) {
  const int64_t layer = 1;
  const NamedTensors original = RandomAttentionWeights(config, 7);
  const std::string megatron_path = TempPath("megatron.safetensors");
  const std::string hf_path = TempPath("hf.safetensors");
  {
    SafetensorsWriter writer;
    AddMegatronAttentionWeights(writer, config, original, layer, dtype, names);
    writer.Write(megatron_path);
  }
  const SafetensorsFile megatron = SafetensorsFile::Open(megatron_path);
  EXPECT_EQ(DetectWeightFormat(megatron, config, layer), "megatron");
  NamedTensors from_megatron = ReadAttentionWeightsAnyFormat(megatron, config, layer);
  {
    SafetensorsWriter writer;
    AddHfAttentionWeights(writer, config, from_megatron, layer, dtype);
    writer.Write(hf_path);
  }
  const SafetensorsFile hf = SafetensorsFile::Open(hf_path);
  EXPECT_EQ(DetectWeightFormat(hf, config, layer), "hf");
  NamedTensors from_hf = ReadHfAttentionWeights(hf, config, layer);
  if (dtype == DType::kF32) ExpectSameWeights(original, from_megatron);
  ExpectSameWeights(from_megatron, from_hf);

  const Tensor hidden = RandomUniform({1, 5, config.hidden_size}, 3, 1.0f);
  const TokenBatch batch{&hidden, {}, {}};
  const Tensor a =
      BuildAttentionLayer(config, layer, std::move(from_megatron))->Forward(batch, MlaForm::kAuto);
  const Tensor b =
      BuildAttentionLayer(config, layer, std::move(from_hf))->Forward(batch, MlaForm::kAuto);
  EXPECT_TRUE(BitEqual(a, b));
  std::remove(megatron_path.c_str());
  std::remove(hf_path.c_str());
}

TEST(MegatronWeightsTest, GqaRoundTripWithBiases) {
  ModelConfig c = SmallGqaConfig(4, 2);
  c.gqa.qkv_bias = true;
  c.gqa.o_bias = true;
  RoundTrip(c, MegatronNormNames::kTransformerEngine, DType::kF32);
  RoundTrip(SmallGqaConfig(4, 1), MegatronNormNames::kLocal, DType::kBF16);
}

TEST(MegatronWeightsTest, MlaRoundTripBothNormSpellings) {
  RoundTrip(SmallMlaConfig(32), MegatronNormNames::kTransformerEngine, DType::kF32);
  RoundTrip(SmallMlaConfig(32), MegatronNormNames::kLocal, DType::kBF16);
  RoundTrip(SmallMlaConfig(0), MegatronNormNames::kLocal, DType::kF32);
}

TEST(MegatronWeightsTest, MlaNamesAreTheMegatronCoreOnes) {
  const ModelConfig c = SmallMlaConfig(32);
  SafetensorsWriter writer;
  AddMegatronAttentionWeights(writer, c, RandomAttentionWeights(c, 1), 0, DType::kF32,
                              MegatronNormNames::kTransformerEngine);
  const std::string path = TempPath("names.safetensors");
  writer.Write(path);
  const SafetensorsFile file = SafetensorsFile::Open(path);
  const std::string p = "decoder.layers.0.self_attention.";
  for (const char* name :
       {"linear_q_down_proj.weight", "linear_q_up_proj.layer_norm_weight",
        "linear_q_up_proj.weight", "linear_kv_down_proj.weight",
        "linear_kv_up_proj.layer_norm_weight", "linear_kv_up_proj.weight", "linear_proj.weight"}) {
    EXPECT_TRUE(file.Contains(p + name)) << name;
  }
  EXPECT_EQ(file.Names().size(), 7u);
  std::remove(path.c_str());
}

void ExpectReadError(const ModelConfig& config, const NamedTensors& tensors,
                     std::initializer_list<std::string> needles, ErrorKind kind) {
  const std::string path = TempPath("bad.safetensors");
  SafetensorsWriter writer;
  for (const auto& [name, tensor] : tensors) writer.AddF32(name, tensor);
  writer.Write(path);
  const SafetensorsFile file = SafetensorsFile::Open(path);
  try {
    ReadMegatronAttentionWeights(file, config, 0);
    ADD_FAILURE() << "expected attn::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
  std::remove(path.c_str());
}

TEST(MegatronWeightsTest, MissingAndMisshapenTensorsAreNamed) {
  const ModelConfig mla = SmallMlaConfig(32);
  const std::string p = "decoder.layers.0.self_attention.";
  NamedTensors tensors;
  tensors.emplace(p + "linear_q_down_proj.weight", Tensor({32, 96}));
  ExpectReadError(mla, tensors,
                  {p + "q_layernorm.weight", p + "linear_q_up_proj.layer_norm_weight"},
                  ErrorKind::kNotFound);
  tensors.clear();
  tensors.emplace(p + "linear_q_down_proj.weight", Tensor({31, 96}));
  ExpectReadError(mla, tensors, {p + "linear_q_down_proj.weight", "[32, 96]"},
                  ErrorKind::kInvalidArgument);
  tensors.clear();
  tensors.emplace(p + "linear_q_down_proj.weight", Tensor({32, 96}));
  tensors.emplace(p + "q_layernorm.weight", Tensor({32}));
  tensors.emplace(p + "linear_q_up_proj.layer_norm_weight", Tensor({32}));
  ExpectReadError(mla, tensors, {"both"}, ErrorKind::kInvalidArgument);

  const ModelConfig gqa = SmallGqaConfig(4, 2);  // (4 + 2·2)·16 = 128 fused rows
  tensors.clear();
  tensors.emplace(p + "linear_qkv.weight", Tensor({96, 64}));
  ExpectReadError(gqa, tensors, {p + "linear_qkv.weight", "[128, 64]"},
                  ErrorKind::kInvalidArgument);
  tensors.clear();
  tensors.emplace(p + "linear_qkv.weight", Tensor({128, 64}));
  ExpectReadError(gqa, tensors, {p + "linear_proj.weight"}, ErrorKind::kNotFound);
}

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.kind, b.kind);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_layers, b.num_layers);
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
  EXPECT_EQ(a.rope.scaling.type, b.rope.scaling.type);
  EXPECT_EQ(a.rope.scaling.factor, b.rope.scaling.factor);
  EXPECT_EQ(a.rope.scaling.original_max_position_embeddings,
            b.rope.scaling.original_max_position_embeddings);
  EXPECT_EQ(a.rope.scaling.mscale, b.rope.scaling.mscale);
  EXPECT_EQ(a.rope.scaling.mscale_all_dim, b.rope.scaling.mscale_all_dim);
  EXPECT_EQ(a.rope.scaling.beta_fast, b.rope.scaling.beta_fast);
  EXPECT_EQ(SoftmaxScale(a), SoftmaxScale(b));
}

TEST(MegatronConfigTest, PresetsSurviveBothNamings) {
  for (const char* preset : {"deepseek-v3", "deepseek-v2-lite", "kimi-k2", "llama-3-70b",
                             "llama-3.1-8b", "qwen2.5-7b", "falcon-7b"}) {
    SCOPED_TRACE(preset);
    const ModelConfig c = LoadPreset(preset);
    const LoadedConfig megatron = ParseMegatronConfig(MegatronConfigJson(c), "megatron.json");
    ExpectSameConfig(megatron.config, c);
    ExpectSameConfig(ParseHfConfig(HfConfigJson(megatron.config)), c);
    ExpectSameConfig(ParseHfConfig(HfConfigJson(c)), c);
  }
}

TEST(MegatronConfigTest, MegatronNamesMapToHfMeaning) {
  const LoadedConfig loaded = ParseMegatronConfig(R"({"num_layers": 61, "hidden_size": 7168,
      "num_attention_heads": 128, "multi_latent_attention": true, "q_lora_rank": 1536,
      "kv_lora_rank": 512, "qk_head_dim": 128, "qk_pos_emb_head_dim": 64, "v_head_dim": 128,
      "rotary_base": 10000, "rope_type": "yarn", "rotary_scaling_factor": 40, "mscale": 1.0,
      "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
      "layernorm_epsilon": 1e-6, "max_position_embeddings": 163840})",
                                                  "v3.json");
  ExpectSameConfig(loaded.config, LoadPreset("deepseek-v3"));
  const LoadedConfig gqa = ParseMegatronConfig(R"({"num_layers": 80, "hidden_size": 8192,
      "num_attention_heads": 64, "group_query_attention": true, "num_query_groups": 8,
      "kv_channels": 128, "rotary_base": 500000, "add_bias_linear": false})",
                                               "llama.json");
  ExpectSameConfig(gqa.config, LoadPreset("llama-3-70b"));
}

TEST(MegatronConfigTest, ContradictionsNameTheKeys) {
  try {
    ParseMegatronConfig(R"({"num_layers": 2, "hidden_size": 512, "num_attention_heads": 8,
        "num_query_groups": 3, "kv_channels": 64})",
                        "bad.json");
    FAIL() << "expected attn::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not divisible"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("num_query_groups"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ParseMegatronConfig(R"({"num_layers": 2, "hidden_size": 512,
      "num_attention_heads": 8, "multi_latent_attention": true, "q_lora_rank": null,
      "kv_lora_rank": 64, "qk_head_dim": 32, "qk_pos_emb_head_dim": 15, "v_head_dim": 32,
      "rope_type": "rope"})",
                                   "odd.json"),
               Error);
  EXPECT_THROW(ParseMegatronConfig(R"({"num_layers": 2, "hidden_size": 512,
      "num_attention_heads": 8, "multi_latent_attention": true, "kv_lora_rank": 64,
      "qk_head_dim": 32, "qk_pos_emb_head_dim": 16, "v_head_dim": 32})",
                                   "no-q-lora.json"),
               Error);
}

// Falcon: weights written under its fused names read back to the same q/k/v/o.
TEST(FalconWeightsTest, FusedQueryKeyValueRoundTrip) {
  for (const char* json : {R"({"model_type": "falcon", "hidden_size": 64,
      "num_attention_heads": 4, "num_hidden_layers": 2, "multi_query": true})",
                           R"({"model_type": "falcon", "hidden_size": 64,
      "num_attention_heads": 4, "num_kv_heads": 2, "num_hidden_layers": 2,
      "new_decoder_architecture": true, "bias": true})",
                           R"({"model_type": "falcon", "hidden_size": 64,
      "num_attention_heads": 4, "num_hidden_layers": 2, "multi_query": false})"}) {
    const ModelConfig c = ParseHfConfig(json);
    const NamedTensors original = RandomAttentionWeights(c, 5);
    SafetensorsWriter writer;
    AddHfAttentionWeights(writer, c, original, 1);
    const std::string path = TempPath("falcon.safetensors");
    writer.Write(path);
    const SafetensorsFile file = SafetensorsFile::Open(path);
    EXPECT_TRUE(file.Contains("transformer.h.1.self_attention.query_key_value.weight"));
    EXPECT_TRUE(file.Contains("transformer.h.1.self_attention.dense.weight"));
    EXPECT_EQ(file.Contains("transformer.h.1.self_attention.dense.bias"), c.gqa.o_bias);
    ExpectSameWeights(original, ReadHfAttentionWeights(file, c, 1));
    std::remove(path.c_str());
  }
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

// Configs with a later family's attention features are not written as an older family's.
TEST(ConfigWriters, RefuseFeaturesTheyCannotSpell) {
  ModelConfig qwen3 = testing::SmallGqaConfig(4, 2);
  qwen3.model_type = "qwen3";
  qwen3.gqa.qk_norm = QkNorm::kPerHead;
  for (auto writer : {&HfConfigJson, &MegatronConfigJson}) {
    try {
      writer(qwen3);
      ADD_FAILURE() << "expected attn::Error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
      EXPECT_NE(std::string(e.what()).find("q/k norms"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace attn
