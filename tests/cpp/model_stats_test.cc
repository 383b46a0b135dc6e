// SPDX-License-Identifier: Apache-2.0
// `attn info`'s arithmetic against values computed by hand for real models (docs/semantics.md §6,
// §7.6): DeepSeek-V3, Llama-3-70B, Falcon-7B, Mistral-7B (window), Llama 4 Scout (chunks) and
// DeepSeek-V2-Lite.
#include "attn/model_stats.h"

#include <gtest/gtest.h>

#include <cmath>

#include "attn/error.h"
#include "attn/presets.h"

namespace attn {
namespace {

constexpr double kGiB = 1073741824.0;

TEST(ModelStatsTest, DeepSeekV3ParametersAndCacheRatios) {
  const ModelConfig v3 = LoadPreset("deepseek-v3");
  // q_a 1536x7168 + norm 1536 + q_b 24576x1536 + kv_a 576x7168 + norm 512 + kv_b 32768x512
  // + o 7168x16384 = 187,107,328 ("187.1M", §6).
  EXPECT_EQ(AttentionParameterCount(v3), 187107328);
  // MHA of D 7168, H 128 (d 56): 4·7168² = 205,520,896; ratio 0.91 (§7.6).
  EXPECT_EQ(AttentionParameterCount(MhaBaseline(v3)), 4LL * 7168 * 7168);
  const ModelStats s = ComputeModelStats(v3, {131072, 1, DType::kBF16, 80 * kGiB});
  EXPECT_NEAR(s.params_ratio_to_mha, 0.9104, 5e-4);
  ASSERT_EQ(s.forms.size(), 2u);
  EXPECT_EQ(s.forms[0].values_per_token_layer, 40960);           // naive H·(dn+dr+dv)
  EXPECT_EQ(s.forms[1].values_per_token_layer, 576);             // latent rk + dr
  EXPECT_EQ(s.mha.values_per_token_layer, 14336);                // 2·D
  EXPECT_NEAR(s.forms[1].ratio_to_mha, 576.0 / 14336.0, 1e-12);  // 0.04x (§7.6)
  EXPECT_NEAR(s.forms[1].ratio_to_mha, 0.04, 0.001);
  EXPECT_NEAR(40960.0 / 576.0, 71.1, 0.05);  // "the latent cache is 71x smaller"
  // bf16: 576·2·61 = 70,272 bytes per token for the model; 80 GiB / 70,272 = 1,222,383 tokens.
  EXPECT_EQ(s.forms[1].bytes_per_token_model, 70272.0);
  EXPECT_EQ(s.forms[1].longest_context, 1222383);
  EXPECT_EQ(s.forms[1].bytes_at_context, 70272.0 * 131072.0);
  // Decode intensity of absorbed MLA: 2·H·(2·rk+dr)/((rk+dr)·2 bytes) = 2·128·1088/1152.
  EXPECT_NEAR(s.forms[1].decode_intensity, 2.0 * 128 * 1088 / 1152.0, 1e-9);
  EXPECT_NEAR(s.forms[0].decode_intensity, 1.0, 1e-12);  // naive: 2 FLOPs per 2-byte value
}

TEST(ModelStatsTest, Llama3_70bByHand) {
  const ModelConfig llama = LoadPreset("llama-3-70b");
  // q, o 8192x8192 each, k, v 1024x8192 each: 150,994,944 ("151.0M", §6).
  EXPECT_EQ(AttentionParameterCount(llama), 150994944);
  const ModelStats s = ComputeModelStats(llama, {8192, 1, DType::kBF16, 80 * kGiB});
  ASSERT_EQ(s.forms.size(), 1u);
  EXPECT_EQ(s.forms[0].values_per_token_layer, 2048);
  EXPECT_NEAR(s.forms[0].ratio_to_mha, 0.125, 1e-12);
  EXPECT_NEAR(s.params_ratio_to_mha, 150994944.0 / (4.0 * 8192 * 8192), 1e-12);
  // 2048 values · 2 bytes · 80 layers = 327,680 bytes/token; 80 GiB holds exactly 262,144.
  EXPECT_EQ(s.forms[0].bytes_per_token_model, 327680.0);
  EXPECT_EQ(s.forms[0].longest_context, 262144);
  // Decode at T = 8192, per layer: projections 2·8192·(64+16)·128 + 2·64·128·8192 =
  // 301,989,888; attention 4·64·128·8192 = 268,435,456.
  const TokenFlops decode = DecodeFlopsPerToken(llama, CacheForm::kHeads, 8192);
  EXPECT_EQ(decode.projections, 301989888.0);
  EXPECT_EQ(decode.attention, 268435456.0);
  EXPECT_EQ(s.forms[0].decode_flops_per_token, 80.0 * (301989888.0 + 268435456.0));
  // Causal prefill of 8192 tokens: on average (8192 + 1)/2 keys per query.
  EXPECT_EQ(PrefillFlopsPerToken(llama, CacheForm::kHeads, 8192).attention,
            4.0 * 64 * 128 * 4096.5);
  EXPECT_NEAR(s.forms[0].decode_intensity, 8.0, 1e-12);  // 2·(H/G)/2 bytes
  EXPECT_NEAR(s.mha.decode_intensity, 1.0, 1e-12);
}

TEST(ModelStatsTest, Falcon7bMultiQuery) {
  const ModelConfig falcon = LoadPreset("falcon-7b");
  // q, o 4544x4544, k, v 64x4544: 2·20,647,936 + 2·290,816.
  EXPECT_EQ(AttentionParameterCount(falcon), 2 * 20647936 + 2 * 290816);
  const ModelStats s = ComputeModelStats(falcon, {2048, 4, DType::kF32, 0.0});
  EXPECT_EQ(s.forms[0].values_per_token_layer, 128);
  EXPECT_NEAR(s.forms[0].ratio_to_mha, 128.0 / 9088.0, 1e-12);
  EXPECT_EQ(s.forms[0].longest_context, -1);  // no budget given
  // 128 values · 4 bytes · 32 layers · 2048 tokens · batch 4.
  EXPECT_EQ(s.forms[0].bytes_at_context, 128.0 * 4 * 32 * 2048 * 4);
  EXPECT_NEAR(s.forms[0].decode_intensity, 2.0 * 71 / 4.0, 1e-12);
}

TEST(ModelStatsTest, SlidingWindowCapsVisibleKeys) {
  const ModelConfig mistral = LoadPreset("mistral-7b-v0.1");
  // Decode at 32768 sees only the 4096-token window: 4·32·128·4096.
  EXPECT_EQ(DecodeFlopsPerToken(mistral, CacheForm::kHeads, 32768).attention,
            4.0 * 32 * 128 * 4096);
  // Prefill of 8192: (Σ_{p=1..4096} p + 4096·4096) / 8192 keys on average.
  const double keys = (4096.0 * 4097.0 / 2.0 + 4096.0 * 4096.0) / 8192.0;
  EXPECT_EQ(PrefillFlopsPerToken(mistral, CacheForm::kHeads, 8192).attention,
            4.0 * 32 * 128 * keys);
}

// Llama 4 Scout's chunked layers see their own 8192-slot chunk; its NoPE layers (3, 7, …) see
// everything. Attention FLOPs are 4·H·d·T with H = 40, d = 128.
TEST(ModelStatsTest, ChunkedLayersSeeTheirChunkOnly) {
  const ModelConfig scout = LoadPreset("llama-4-scout-17b-16e");
  const double per_key = 4.0 * 40 * 128;
  // Decode with 20000 keys: slot 19999 is in chunk [16384, 24576), so 19999 - 16384 + 1 = 3616.
  EXPECT_EQ(DecodeFlopsPerToken(scout, CacheForm::kHeads, 20000, 0).attention, per_key * 3616);
  EXPECT_EQ(DecodeFlopsPerToken(scout, CacheForm::kHeads, 20000, 3).attention, per_key * 20000);
  // Decode at a chunk's last slot (context 16384) sees the whole chunk, 8192 keys.
  EXPECT_EQ(DecodeFlopsPerToken(scout, CacheForm::kHeads, 16384, 0).attention, per_key * 8192);
  // Prefill of 20000: two full chunks of Σ_{k=1..8192} k and 3616 more of Σ_{k=1..3616} k.
  const double keys = (2.0 * 8192.0 * 8193.0 / 2.0 + 3616.0 * 3617.0 / 2.0) / 20000.0;
  EXPECT_DOUBLE_EQ(PrefillFlopsPerToken(scout, CacheForm::kHeads, 20000, 0).attention,
                   per_key * keys);
  EXPECT_DOUBLE_EQ(PrefillFlopsPerToken(scout, CacheForm::kHeads, 20000, 3).attention,
                   per_key * 20001.0 / 2.0);
  // Within one chunk the chunked layer equals a full-attention one.
  EXPECT_EQ(PrefillFlopsPerToken(scout, CacheForm::kHeads, 100, 0).attention,
            PrefillFlopsPerToken(scout, CacheForm::kHeads, 100, 3).attention);
}

TEST(ModelStatsTest, MlaLatentPrefillTakesTheCheaperForm) {
  const ModelConfig lite = LoadPreset("deepseek-v2-lite");
  // Params: q 3072x2048, kv_a 576x2048, norm 512, kv_b 4096x512, o 2048x2048.
  EXPECT_EQ(AttentionParameterCount(lite), 13763072);
  const TokenFlops naive = PrefillFlopsPerToken(lite, CacheForm::kHeads, 32768);
  const TokenFlops latent = PrefillFlopsPerToken(lite, CacheForm::kLatent, 32768);
  EXPECT_LE(latent.total(), naive.total());
  // Decode in the latent form is absorbed: attention 2·H·(2·rk+dr)·T.
  EXPECT_EQ(DecodeFlopsPerToken(lite, CacheForm::kLatent, 1000).attention,
            2.0 * 16 * (1024 + 64) * 1000);
}

TEST(ModelStatsTest, BudgetThatFitsNothingIsAnError) {
  const ModelConfig v3 = LoadPreset("deepseek-v3");
  try {
    ComputeModelStats(v3, {4096, 8, DType::kBF16, 1000.0});
    FAIL() << "expected attn::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("fits nothing"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("562176"), std::string::npos) << e.what();  // 70272·8
  }
}

TEST(ModelStatsTest, ParsesSizesAndTokenCounts) {
  EXPECT_EQ(ParseTokenCount("128k", "--context"), 131072);
  EXPECT_EQ(ParseTokenCount("4096", "--context"), 4096);
  EXPECT_EQ(ParseTokenCount("1m", "--context"), 1048576);
  EXPECT_EQ(ParseByteSize("80GiB", "--memory"), 80 * kGiB);
  EXPECT_EQ(ParseByteSize("80GB", "--memory"), 80e9);
  EXPECT_EQ(ParseByteSize("512MiB", "--memory"), 512.0 * 1048576.0);
  EXPECT_EQ(ParseByteSize("1000", "--memory"), 1000.0);
  EXPECT_THROW(ParseTokenCount("12q", "--context"), Error);
  EXPECT_THROW(ParseTokenCount("0", "--context"), Error);
  EXPECT_THROW(ParseByteSize("80 parsecs", "--memory"), Error);
  EXPECT_THROW(ParseByteSize("GiB", "--memory"), Error);
}

}  // namespace
}  // namespace attn
