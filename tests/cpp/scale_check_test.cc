// SPDX-License-Identifier: Apache-2.0
// CheckScale on configs that trip each pitfall of docs/semantics.md §7, with hand-computed values.
#include "attn/scale_check.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "attn/hf_config.h"
#include "attn/megatron.h"
#include "attn/presets.h"

namespace attn {
namespace {

const Pitfall& Find(const ScaleReport& r, const std::string& id) {
  for (const Pitfall& p : r.pitfalls) {
    if (p.id == id) return p;
  }
  throw std::logic_error("no pitfall " + id);
}
// The result points into the report: a temporary report would leave it dangling.
const Pitfall& Find(ScaleReport&& r, const std::string& id) = delete;

// mscale(40, 1)^2 = (0.1·ln 40 + 1)^2.
const double kV3MscaleSquared = std::pow(0.1 * std::log(40.0) + 1.0, 2);

TEST(ScaleCheckTest, DeepSeekV3) {
  const ScaleReport r = CheckScale(LoadPreset("deepseek-v3"));
  EXPECT_NEAR(r.softmax_scale, 0.135234, 1e-6);  // §3
  EXPECT_NEAR(r.softmax_scale, kV3MscaleSquared / std::sqrt(192.0), 1e-12);
  EXPECT_EQ(r.rope_attention_factor, 1.0);  // mscale/mscale_all_dim = 1
  // hidden/heads = 56: 1.873854/sqrt(56).
  const Pitfall& kv = Find(r, "kv-channels");
  EXPECT_TRUE(kv.triggered);
  EXPECT_NEAR(*kv.wrong_value, kV3MscaleSquared / std::sqrt(56.0), 1e-12);
  const Pitfall& absorbed = Find(r, "absorbed-width");
  EXPECT_TRUE(absorbed.triggered);
  EXPECT_NEAR(*absorbed.wrong_value, kV3MscaleSquared / std::sqrt(576.0), 1e-12);
  EXPECT_FALSE(Find(r, "mscale-vs-mscale-all-dim").triggered);  // both 1.0
  const Pitfall& missing = Find(r, "missing-mscale-squared");
  EXPECT_TRUE(missing.triggered);
  EXPECT_NEAR(*missing.wrong_value, 1.0 / std::sqrt(192.0), 1e-12);
  EXPECT_FALSE(Find(r, "yarn-attention-factor").triggered);
  EXPECT_TRUE(Find(r, "rope-pairing").triggered);  // interleaved checkpoint
  EXPECT_FALSE(Find(r, "explicit-softmax-scale").triggered);
}

TEST(ScaleCheckTest, DeepSeekV2UnderMegatronDefaultKvChannels) {
  // Megatron-style V2: no kv_channels, so a framework defaulting to hidden/heads uses
  // 1/sqrt(5120/128 = 40), the wrong width of docs/semantics.md §7.1.
  const LoadedConfig loaded = ParseMegatronConfig(R"({"num_layers": 60, "hidden_size": 5120,
      "num_attention_heads": 128, "multi_latent_attention": true, "q_lora_rank": 1536,
      "kv_lora_rank": 512, "qk_head_dim": 128, "qk_pos_emb_head_dim": 64, "v_head_dim": 128,
      "rope_type": "yarn", "rotary_scaling_factor": 40, "mscale": 0.707,
      "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096})",
                                                  "v2.json");
  const ScaleReport r = CheckScale(loaded.config, loaded.megatron);
  EXPECT_NEAR(r.softmax_scale, 0.114721, 1e-6);  // §3
  const double m = 0.1 * 0.707 * std::log(40.0) + 1.0;
  const Pitfall& kv = Find(r, "kv-channels");
  EXPECT_TRUE(kv.triggered);
  EXPECT_NEAR(*kv.wrong_value, m * m / std::sqrt(40.0), 1e-12);
}

TEST(ScaleCheckTest, MscaleWhereMscaleAllDimBelongs) {
  // mscale 1.0 but mscale_all_dim 0.707: using mscale squares the wrong factor.
  const ModelConfig c = ParseHfConfig(R"({"model_type": "deepseek_v2", "hidden_size": 2048,
      "num_attention_heads": 16, "num_hidden_layers": 2, "kv_lora_rank": 512,
      "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
      "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 0.707,
                       "original_max_position_embeddings": 4096}})");
  const ScaleReport r = CheckScale(c);
  const Pitfall& p = Find(r, "mscale-vs-mscale-all-dim");
  EXPECT_TRUE(p.triggered);
  EXPECT_NEAR(*p.wrong_value, kV3MscaleSquared / std::sqrt(192.0), 1e-12);
  const double right = std::pow(0.1 * 0.707 * std::log(40.0) + 1.0, 2) / std::sqrt(192.0);
  EXPECT_NEAR(r.softmax_scale, right, 1e-12);
  // cos/sin carry mscale(40, 1)/mscale(40, 0.707) != 1.
  EXPECT_NEAR(r.rope_attention_factor,
              (0.1 * std::log(40.0) + 1.0) / (0.1 * 0.707 * std::log(40.0) + 1.0), 1e-12);
  EXPECT_TRUE(Find(r, "yarn-attention-factor").triggered);
}

TEST(ScaleCheckTest, MegatronConfigWithoutMscaleAllDim) {
  const LoadedConfig loaded = ParseMegatronConfig(R"({"num_layers": 61, "hidden_size": 7168,
      "num_attention_heads": 128, "multi_latent_attention": true, "q_lora_rank": 1536,
      "kv_lora_rank": 512, "qk_head_dim": 128, "qk_pos_emb_head_dim": 64, "v_head_dim": 128,
      "rotary_scaling_factor": 40, "mscale": 1.0})",
                                                  "v3-megatron.json");
  const ScaleReport r = CheckScale(loaded.config, loaded.megatron);
  EXPECT_NEAR(r.softmax_scale, 1.0 / std::sqrt(192.0), 1e-12);  // what this config says
  EXPECT_TRUE(Find(r, "missing-mscale-squared").triggered);
}

TEST(ScaleCheckTest, QwenStyleYarnNeedsTheAttentionFactor) {
  const ModelConfig c = ParseHfConfig(R"({"model_type": "qwen2", "hidden_size": 3584,
      "num_attention_heads": 28, "num_key_value_heads": 4, "num_hidden_layers": 28,
      "rope_theta": 1000000.0, "rope_scaling": {"type": "yarn", "factor": 4.0,
      "original_max_position_embeddings": 32768}})");
  const ScaleReport r = CheckScale(c);
  EXPECT_EQ(r.softmax_scale, 1.0 / std::sqrt(128.0));
  EXPECT_NEAR(r.rope_attention_factor, 0.1 * std::log(4.0) + 1.0, 1e-12);  // §7.4
  EXPECT_TRUE(Find(r, "yarn-attention-factor").triggered);
  EXPECT_FALSE(Find(r, "kv-channels").triggered);  // 3584/28 = 128 = head_dim
  EXPECT_FALSE(Find(r, "absorbed-width").triggered);
  EXPECT_FALSE(Find(r, "rope-pairing").triggered);  // rotate-half, the framework default
}

TEST(ScaleCheckTest, HeadDimThatIsNotHiddenOverHeads) {
  // An explicit head_dim (256) that differs from hidden/heads (2048/16 = 128).
  const ModelConfig c = ParseHfConfig(R"({"model_type": "llama", "hidden_size": 2048,
      "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 256,
      "num_hidden_layers": 2})");
  const ScaleReport report = CheckScale(c);  // Find returns a reference into the report
  const Pitfall& kv = Find(report, "kv-channels");
  EXPECT_TRUE(kv.triggered);
  EXPECT_NEAR(*kv.wrong_value, 1.0 / std::sqrt(128.0), 1e-12);
}

TEST(ScaleCheckTest, ExplicitMegatronSoftmaxScale) {
  const LoadedConfig loaded = ParseMegatronConfig(R"({"num_layers": 2, "hidden_size": 512,
      "num_attention_heads": 8, "num_query_groups": 2, "kv_channels": 64,
      "softmax_scale": 0.1})",
                                                  "gqa.json");
  const ScaleReport report = CheckScale(loaded.config, loaded.megatron);
  const Pitfall& p = Find(report, "explicit-softmax-scale");
  EXPECT_TRUE(p.triggered);
  EXPECT_EQ(*p.wrong_value, 0.1);
}

}  // namespace
}  // namespace attn
