// SPDX-License-Identifier: Apache-2.0
// KV caches: byte counts equal the per-token formula × tokens (with real-model numbers from
// docs/semantics.md §6), capacity is enforced without partial writes, views point at what
// was written.
#include "attn/kv_cache.h"

#include <gtest/gtest.h>

#include <vector>

#include "attn/error.h"
#include "kernels/cpu/element_load.h"
#include "test_util.h"

namespace attn {
namespace {

ModelConfig DeepSeekV3Dims() {
  ModelConfig c = testing::SmallMlaConfig(1536);
  c.hidden_size = 7168;
  c.num_heads = 128;
  c.mla = {1536, 512, 128, 64, 128, 1e-6};
  return c;
}

TEST(CacheFormula, RealModelValuesPerToken) {
  ModelConfig llama3 = testing::SmallGqaConfig(32, 8);
  llama3.gqa.head_dim = 128;
  EXPECT_EQ(CacheValuesPerToken(llama3, CacheForm::kHeads), 2048);
  ModelConfig llama2 = testing::SmallGqaConfig(32, 32);
  llama2.gqa.head_dim = 128;
  EXPECT_EQ(CacheValuesPerToken(llama2, CacheForm::kHeads), 8192);
  const ModelConfig v3 = DeepSeekV3Dims();
  EXPECT_EQ(CacheValuesPerToken(v3, CacheForm::kLatent), 576);
  EXPECT_EQ(CacheValuesPerToken(v3, CacheForm::kHeads), 40960);
  EXPECT_EQ(
      CacheValuesPerToken(v3, CacheForm::kHeads) / CacheValuesPerToken(v3, CacheForm::kLatent), 71);
  EXPECT_EQ(CacheBytesPerToken(v3, CacheForm::kLatent, DType::kBF16), 1152u);
  EXPECT_THROW(CacheValuesPerToken(llama3, CacheForm::kLatent), Error);
}

TEST(KVCache, BytesEqualFormulaTimesTokens) {
  const ModelConfig c = testing::SmallGqaConfig(8, 2);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    KVCache cache(3, 40, 2, 16, 16, dtype);
    EXPECT_EQ(cache.bytes(), CacheBytesPerToken(c, CacheForm::kHeads, dtype) * 3 * 40);
  }
  const ModelConfig v3 = DeepSeekV3Dims();
  LatentKVCache latent(2, 100, 512, 64, DType::kBF16);
  EXPECT_EQ(latent.bytes(), 576u * 2 * 2 * 100);
  EXPECT_EQ(latent.bytes(), CacheBytesPerToken(v3, CacheForm::kLatent, DType::kBF16) * 200);
}

TEST(KVCache, OverflowIsAnErrorAndWritesNothing) {
  KVCache cache(2, 4, 1, 2, 2, DType::kF32);
  const std::vector<float> k(6 * 2, 1.0f), v(6 * 2, 2.0f);
  cache.Append(0, 3, k.data(), v.data(), nullptr);
  try {
    cache.Append(0, 2, k.data(), v.data(), nullptr);
    FAIL() << "expected an overflow error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCapacity);
    EXPECT_NE(std::string(e.what()).find("overflow"), std::string::npos);
  }
  EXPECT_EQ(cache.length(0), 3);
  EXPECT_THROW(cache.CheckRoom(std::vector<int64_t>{1, 5}), Error);
  EXPECT_NO_THROW(cache.CheckRoom(std::vector<int64_t>{1, 4}));
  cache.Append(0, 1, k.data(), v.data(), nullptr);
  EXPECT_EQ(cache.length(0), 4);
  EXPECT_EQ(cache.length(1), 0);
}

TEST(KVCache, ViewReadsBackWhatWasAppendedHeadMajor) {
  KVCache cache(2, 5, 2, 3, 2, DType::kF32);
  // token n, head g: key = 100n + 10g + i, value = -(100n + 10g + i)
  std::vector<float> k, v;
  for (int n = 0; n < 2; ++n) {
    for (int g = 0; g < 2; ++g) {
      for (int i = 0; i < 3; ++i) k.push_back(100.0f * n + 10.0f * g + i);
      for (int i = 0; i < 2; ++i) v.push_back(-(100.0f * n + 10.0f * g + i));
    }
  }
  const std::vector<uint8_t> keep = {1, 0};
  cache.Append(1, 2, k.data(), v.data(), keep.data());
  const KVView view = cache.View(1);
  EXPECT_EQ(view.length, 2);
  EXPECT_EQ(view.keep[0], 1);
  EXPECT_EQ(view.keep[1], 0);
  const float* keys = static_cast<const float*>(view.keys);
  const float* values = static_cast<const float*>(view.values);
  EXPECT_EQ(keys[1 * view.key_head_stride + 1 * view.key_token_stride + 2], 112.0f);
  EXPECT_EQ(values[1 * view.value_head_stride + 0 * view.value_token_stride + 1], -11.0f);
  EXPECT_EQ(cache.View(0).length, 0);
}

TEST(LatentKVCache, ValuesAreTheFirstRkEntriesOfTheKeyRow) {
  LatentKVCache cache(1, 3, 4, 2, DType::kBF16);
  const std::vector<float> rows = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  cache.Append(0, 2, rows.data(), nullptr);
  const KVView view = cache.View(0);
  EXPECT_EQ(view.values, view.keys);
  EXPECT_EQ(view.key_dim, 6);
  EXPECT_EQ(view.value_dim, 4);
  EXPECT_EQ(view.kv_heads, 1);
  std::vector<float> back(12);
  cache.ReadRows(0, back.data());
  EXPECT_EQ(back, rows);  // small integers are exact in bf16
  EXPECT_THROW(cache.Append(0, 2, rows.data(), nullptr), Error);
}

TEST(KVCache, RejectsBadGeometry) {
  EXPECT_THROW(KVCache(0, 4, 1, 2, 2, DType::kF32), Error);
  EXPECT_THROW(KVCache(1, 0, 1, 2, 2, DType::kF32), Error);
  EXPECT_THROW(KVCache(1, 4, 1, 2, 2, DType::kI64), Error);
  EXPECT_THROW(LatentKVCache(1, int64_t{1} << 62, 512, 64, DType::kF32), Error);
}

}  // namespace
}  // namespace attn
