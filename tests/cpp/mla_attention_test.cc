// SPDX-License-Identifier: Apache-2.0
// MLA: the three execution forms agree, decode reproduces prefill in every form, the auto
// form's FLOP estimate matches hand-computed values and picks each path where it should, and
// the latent cache holds rk + dr values per token.
#include "attn/mla_attention.h"

#include <gtest/gtest.h>

#include <vector>

#include "attn/error.h"
#include "attn/layer_weights.h"
#include "test_util.h"

namespace attn {
namespace {

using testing::RelativeError;

class MlaFormsTest : public ::testing::TestWithParam<int64_t /*q_lora_rank*/> {};

TEST_P(MlaFormsTest, NaiveAbsorbedAndAutoAgree) {
  const ModelConfig c = testing::SmallMlaConfig(GetParam());
  const auto layer = BuildAttentionLayer(c, 0, RandomAttentionWeights(c, 4));
  const Tensor x = RandomUniform({2, 9, c.hidden_size}, 3, 1.0f);
  // Positions past original_max_position_embeddings (32), where YaRN matters.
  std::vector<int64_t> positions;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t s = 0; s < 9; ++s) positions.push_back(40 * b + 100 + s);
  std::vector<uint8_t> keep(18, 1);
  keep[9] = 0;
  const TokenBatch batch{&x, positions, keep};
  const Tensor naive = layer->Forward(batch, MlaForm::kNaive);
  const Tensor absorbed = layer->Forward(batch, MlaForm::kAbsorbed);
  const Tensor automatic = layer->Forward(batch, MlaForm::kAuto);
  EXPECT_LT(RelativeError(absorbed, naive), 1e-5);
  EXPECT_LT(RelativeError(automatic, naive), 1e-5);
}

TEST_P(MlaFormsTest, DecodeEqualsPrefillInEveryForm) {
  const ModelConfig c = testing::SmallMlaConfig(GetParam());
  const auto layer = BuildAttentionLayer(c, 0, RandomAttentionWeights(c, 6));
  const Tensor x = RandomUniform({2, 10, c.hidden_size}, 8, 1.0f);
  const TokenBatch batch{&x, {}, {}};
  const Tensor reference = layer->Forward(batch, MlaForm::kNaive);
  for (MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed, MlaForm::kAuto}) {
    for (int64_t prefill : {1, 6}) {
      const Tensor stepped = layer->PrefillThenDecode(batch, prefill, form, DType::kF32);
      EXPECT_LT(RelativeError(stepped, reference), 1e-5) << MlaFormName(form) << " " << prefill;
    }
  }
  const Tensor bf16 = layer->PrefillThenDecode(batch, 6, MlaForm::kAuto, DType::kBF16);
  EXPECT_LT(RelativeError(bf16, reference), 3e-2);
}

INSTANTIATE_TEST_SUITE_P(QueryCompression, MlaFormsTest, ::testing::Values(0, 48));

// DeepSeek-V3: H 128, rk 512, dn 128, dr 64, dv 128.
TEST(MlaFormCosts, MatchHandComputedDeepSeekV3Values) {
  ModelConfig c = testing::SmallMlaConfig(1536);
  c.num_heads = 128;
  c.mla = {1536, 512, 128, 64, 128, 1e-6};
  // decode: S = 1, T = 4096
  const MlaFormCosts decode = EstimateMlaFormCosts(c, 1, 4096);
  // 2·4096·512·128·256 + 2·1·4096·128·320
  EXPECT_DOUBLE_EQ(decode.decompress_flops, 137438953472.0 + 335544320.0);
  // 2·128·128·512 + 2·128·512·128 + 2·4096·128·1088
  EXPECT_DOUBLE_EQ(decode.absorbed_flops, 16777216.0 + 16777216.0 + 1140850688.0);
  EXPECT_FALSE(AutoPrefersDecompress(c, 1, 4096));
  // a long prefill: S = T = 4096 decompresses (per (s,t) pair 81920 vs 278528 FLOPs)
  EXPECT_TRUE(AutoPrefersDecompress(c, 4096, 4096));
  // the crossover at T = 4096: decompress wins once 33.55M·T < 838.9M·S, i.e. S > 163.8
  EXPECT_FALSE(AutoPrefersDecompress(c, 160, 4096));
  EXPECT_TRUE(AutoPrefersDecompress(c, 180, 4096));
}

TEST(MlaAttention, CacheFormsAndErrors) {
  const ModelConfig c = testing::SmallMlaConfig(48);
  const auto layer = BuildAttentionLayer(c, 0, RandomAttentionWeights(c, 4));
  const auto latent = layer->NewCache(1, 8, DType::kBF16, MlaForm::kAuto);
  EXPECT_EQ(latent->bytes_per_token(), (64u + 16u) * 2u);
  const auto heads = layer->NewCache(1, 8, DType::kF32, MlaForm::kNaive);
  EXPECT_EQ(heads->bytes_per_token(), 4u * (32u + 16u + 24u) * 4u);
  const Tensor x = RandomUniform({1, 3, c.hidden_size}, 3, 1.0f);
  EXPECT_THROW(layer->Step({&x, {}, {}}, *latent, MlaForm::kNaive), Error);
  EXPECT_THROW(layer->Step({&x, {}, {}}, *heads, MlaForm::kAbsorbed), Error);
  layer->Step({&x, {}, {}}, *latent, MlaForm::kAbsorbed);
  layer->Step({&x, {}, {}}, *latent, MlaForm::kAuto);  // forms may mix on one latent cache
  EXPECT_THROW(layer->Step({&x, {}, {}}, *latent, MlaForm::kAuto), Error);  // 9 > 8
  EXPECT_EQ(latent->length(0), 6);
  EXPECT_THROW(MlaFormFromString("fast"), Error);

  NamedTensors w = RandomAttentionWeights(c, 1);
  w["kv_b_proj.weight"] = Tensor({4, 4});
  try {
    BuildAttentionLayer(c, 0, std::move(w));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kv_b_proj.weight"), std::string::npos);
  }
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

// Ragged decode: one sequence steps while the other sits idle, in every form.
TEST(MlaAttention, RaggedBatchEqualsSequencesAlone) {
  const ModelConfig c = testing::SmallMlaConfig(48);
  const auto layer = BuildAttentionLayer(c, 0, RandomAttentionWeights(c, 2));
  const int64_t D = c.hidden_size, S = 5;
  const Tensor x = RandomUniform({2, S, D}, 5, 1.0f);
  for (MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed, MlaForm::kAuto}) {
    auto cache = layer->NewCache(2, 8, DType::kF32, form);
    const std::vector<int64_t> lengths = {5, 3};
    const Tensor y = layer->Step({&x, {}, {}, lengths}, *cache, form);
    Tensor second({1, 3, D});
    std::copy_n(x.data() + S * D, 3 * D, second.data());
    const Tensor alone = layer->Forward({&second, {}, {}}, MlaForm::kNaive);
    EXPECT_LT(testing::RelativeError(y.data() + S * D, alone.data(), 3 * D), 1e-5)
        << MlaFormName(form);
    EXPECT_EQ(cache->length(1), 3);
    for (int64_t i = (S + 3) * D; i < 2 * S * D; ++i) ASSERT_EQ(y.data()[i], 0.0f);
  }
}

}  // namespace
}  // namespace attn
