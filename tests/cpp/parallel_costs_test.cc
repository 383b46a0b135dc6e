// SPDX-License-Identifier: Apache-2.0
// The scaling model (attn/parallel_costs.h, docs/distributed.md) against numbers computed by
// hand from the tensor shapes and the formulas of the design, written out here independently of
// the library's spec tables.
#include "attn/parallel_costs.h"

#include <gtest/gtest.h>

#include <cstdint>

#include "attn/error.h"
#include "attn/model_stats.h"
#include "attn/presets.h"
#include "test_util.h"

namespace attn {
namespace {

using testing::ExpectError;
using testing::SmallGqaConfig;
using testing::SmallMlaConfig;

ParallelCosts Costs(const ModelConfig& config, ParallelMode mode, int world, int64_t batch,
                    int64_t context, DType weights = DType::kF32, DType cache = DType::kBF16) {
  return EstimateParallelCosts(config, mode, world, batch, context, weights, cache);
}

// SmallGqaConfig(4, 2): D 64, H 4, G 2, d 16. Shapes [out, in]: q 64x64, k 32x64, v 32x64,
// o 64x64 = 12288 values; bf16 cache 2·G·d·2 = 128 bytes per token.
TEST(ParallelCostsTest, GqaTensorParallelHoldsItsHeadsSlices) {
  const ModelConfig config = SmallGqaConfig(4, 2);
  // W 2: 2 query heads, 1 kv head: q 32x64, k 16x64, v 16x64, o 64x32 = 6144 values.
  const ParallelCosts two = Costs(config, ParallelMode::kTensor, 2, 3, 7);
  EXPECT_DOUBLE_EQ(two.weight_bytes, 6144.0 * 4);
  EXPECT_DOUBLE_EQ(two.cache_bytes_per_token, 2 * 1 * 16 * 2);
  EXPECT_DOUBLE_EQ(two.cache_bytes, 3.0 * 7 * 64);
  // W 4: 1 query head; G 2 < 4, so each rank holds one replicated kv head: q, k, v, o 16x64.
  const ParallelCosts four = Costs(config, ParallelMode::kTensor, 4, 3, 7);
  EXPECT_DOUBLE_EQ(four.weight_bytes, 4096.0 * 4);
  EXPECT_DOUBLE_EQ(four.cache_bytes_per_token, 64.0);  // does not shrink past G ranks
  EXPECT_EQ(four.sequences_per_rank, 3);
  EXPECT_EQ(four.tokens_per_rank, 7);
  // One all-reduce of B·D fp32 values: all-gather + local sum receives (W-1)·B·D·4.
  EXPECT_DOUBLE_EQ(four.comm_bytes_decode_step, 3.0 * 3 * 64 * 4);
  EXPECT_DOUBLE_EQ(four.comm_bytes_decode_step_ring, 2.0 * 3 / 4 * 3 * 64 * 4);
  EXPECT_DOUBLE_EQ(four.comm_bytes_prefill_token, 3.0 * 64 * 4);
  EXPECT_DOUBLE_EQ(four.comm_bytes_prefill_token_ring, 2.0 * 3 / 4 * 64 * 4);
  // Per token on a rank with H' 2, G' 1: projections 2·D·(H'+2G')·d + 2·H'·d·D, attention
  // 4·H'·d·T; B 3 rows per step.
  EXPECT_DOUBLE_EQ(two.decode_projection_flops, 3.0 * (2 * 64 * 4 * 16 + 2 * 2 * 16 * 64));
  EXPECT_DOUBLE_EQ(two.decode_attention_flops, 3.0 * 4 * 2 * 16 * 7);
}

TEST(ParallelCostsTest, GqaWeightsInBf16AndFp8CountStoredBytesAndBlockScales) {
  ModelConfig config = SmallGqaConfig(4, 2);
  const ParallelCosts bf16 = Costs(config, ParallelMode::kTensor, 2, 1, 1, DType::kBF16);
  EXPECT_DOUBLE_EQ(bf16.weight_bytes, 6144.0 * 2);
  // fp8 with 16x16 blocks: q 32x64 -> 2·4, k 16x64 -> 1·4, v 1·4, o 64x32 -> 4·2 = 24 scales.
  config.quantization.block_rows = 16;
  config.quantization.block_cols = 16;
  const ParallelCosts fp8 = Costs(config, ParallelMode::kTensor, 2, 1, 1, DType::kF8E4M3);
  EXPECT_DOUBLE_EQ(fp8.weight_bytes, 6144.0 + 24 * 4);
}

TEST(ParallelCostsTest, DataAndContextParallelSplitTheCacheNotTheWeights) {
  const ModelConfig config = SmallGqaConfig(4, 2);
  // dp, W 2, B 5: the busiest rank holds ⌈5/2⌉ = 3 sequences; the least busy one (2 sequences)
  // receives the other 3 output rows.
  const ParallelCosts dp = Costs(config, ParallelMode::kData, 2, 5, 7);
  EXPECT_DOUBLE_EQ(dp.weight_bytes, 12288.0 * 4);
  EXPECT_EQ(dp.sequences_per_rank, 3);
  EXPECT_DOUBLE_EQ(dp.cache_bytes, 3.0 * 7 * 128);
  EXPECT_DOUBLE_EQ(dp.comm_bytes_decode_step, 3.0 * 64 * 4);
  EXPECT_DOUBLE_EQ(dp.comm_bytes_prefill_token, 0.5 * 64 * 4);
  EXPECT_DOUBLE_EQ(dp.decode_projection_flops, 3.0 * (2 * 64 * 8 * 16 + 2 * 4 * 16 * 64));
  EXPECT_DOUBLE_EQ(dp.decode_attention_flops, 3.0 * 4 * 4 * 16 * 7);

  // cp, W 4, T 7: ⌈7/4⌉ = 2 tokens of each of the 5 sequences; the merge moves max (H floats)
  // and sum (H·(d+1) floats) per row, (W-1)·n·4 bytes each.
  const ParallelCosts cp = Costs(config, ParallelMode::kContext, 4, 5, 7);
  EXPECT_DOUBLE_EQ(cp.weight_bytes, 12288.0 * 4);
  EXPECT_EQ(cp.tokens_per_rank, 2);
  EXPECT_DOUBLE_EQ(cp.cache_bytes, 5.0 * 2 * 128);
  EXPECT_DOUBLE_EQ(cp.comm_bytes_decode_step, 3.0 * 5 * 4 * (16 + 2) * 4);
  EXPECT_DOUBLE_EQ(cp.comm_bytes_decode_step_ring, 2.0 * 3 / 4 * 5 * 4 * 18 * 4);
  EXPECT_DOUBLE_EQ(cp.comm_bytes_prefill_token, 3.0 * 4 * 18 * 4);
  // Projections replicated on every rank; attention over the rank's 2 keys.
  EXPECT_DOUBLE_EQ(cp.decode_projection_flops, 5.0 * (2 * 64 * 8 * 16 + 2 * 4 * 16 * 64));
  EXPECT_DOUBLE_EQ(cp.decode_attention_flops, 5.0 * 4 * 4 * 16 * 2);
}

TEST(ParallelCostsTest, OneRankIsTheUnsplitLayerInEveryMode) {
  for (const ModelConfig& config : {SmallGqaConfig(4, 2), SmallMlaConfig(32)}) {
    const CacheForm form =
        config.kind == AttentionKind::kMla ? CacheForm::kLatent : CacheForm::kHeads;
    const TokenFlops flops = DecodeFlopsPerToken(config, form, 9);
    for (ParallelMode mode : {ParallelMode::kTensor, ParallelMode::kData, ParallelMode::kContext}) {
      SCOPED_TRACE(ParallelModeName(mode));
      const ParallelCosts one = Costs(config, mode, 1, 5, 9, DType::kBF16);
      EXPECT_DOUBLE_EQ(one.weight_bytes, AttentionWeightBytes(config, DType::kBF16));
      EXPECT_DOUBLE_EQ(
          one.cache_bytes,
          5.0 * 9 * static_cast<double>(CacheBytesPerToken(config, form, DType::kBF16)));
      EXPECT_EQ(one.comm_bytes_decode_step, 0.0);
      EXPECT_EQ(one.comm_bytes_decode_step_ring, 0.0);
      EXPECT_EQ(one.comm_bytes_prefill_token, 0.0);
      EXPECT_DOUBLE_EQ(one.decode_projection_flops, 5.0 * flops.projections);
      EXPECT_DOUBLE_EQ(one.decode_attention_flops, 5.0 * flops.attention);
    }
  }
}

// SmallMlaConfig(32): D 96, H 4, rq 32, rk 64, dn 32, dr 16, dv 24. Whole layer: q_a 32x96,
// q_a_layernorm 32, q_b 192x32, kv_a 80x96, kv_a_layernorm 64, kv_b 224x64, o 96x96.
TEST(ParallelCostsTest, MlaTensorParallelReplicatesTheLatentPath) {
  ModelConfig config = SmallMlaConfig(32);
  EXPECT_DOUBLE_EQ(AttentionWeightBytes(config, DType::kF32),
                   (3072.0 + 32 + 6144 + 7680 + 64 + 14336 + 9216) * 4);
  // W 2: q_a, its norm, kv_a, its norm whole (10848 values); q_b 96x32, kv_b 112x64, o 96x48.
  const ParallelCosts f32 = Costs(config, ParallelMode::kTensor, 2, 3, 10);
  EXPECT_DOUBLE_EQ(f32.weight_bytes, (10848.0 + 3072 + 7168 + 4608) * 4);
  const ParallelCosts bf16 = Costs(config, ParallelMode::kTensor, 2, 3, 10, DType::kBF16);
  EXPECT_DOUBLE_EQ(bf16.weight_bytes, (3072.0 + 3072 + 7680 + 7168 + 4608) * 2 + 96 * 4);
  // 16x16 fp8 blocks: q_a 2·6, q_b 6·2, kv_a 5·6, kv_b 7·4, o 6·3 = 100 fp32 scales.
  config.quantization.block_rows = 16;
  config.quantization.block_cols = 16;
  const ParallelCosts fp8 = Costs(config, ParallelMode::kTensor, 2, 3, 10, DType::kF8E4M3);
  EXPECT_DOUBLE_EQ(fp8.weight_bytes, 25600.0 + 96 * 4 + 100 * 4);
  // The latent cache, (rk + dr)·2 bytes, whole on every rank at every W.
  for (int world : {1, 2, 4}) {
    const ParallelCosts tp = Costs(config, ParallelMode::kTensor, world, 3, 10);
    EXPECT_DOUBLE_EQ(tp.cache_bytes_per_token, (64.0 + 16) * 2);
    EXPECT_DOUBLE_EQ(tp.cache_bytes, 3.0 * 10 * 160);
    EXPECT_DOUBLE_EQ(tp.comm_bytes_decode_step, (world - 1.0) * 3 * 96 * 4);
  }
}

TEST(ParallelCostsTest, MlaContextParallelMergesTheLatentOutput) {
  const ModelConfig config = SmallMlaConfig(32);
  // The merge runs before W_UV: per row H·(rk + 2) floats.
  const ParallelCosts cp = Costs(config, ParallelMode::kContext, 4, 3, 10);
  EXPECT_EQ(cp.tokens_per_rank, 3);
  EXPECT_DOUBLE_EQ(cp.cache_bytes, 3.0 * 3 * 160);
  EXPECT_DOUBLE_EQ(cp.comm_bytes_decode_step, 3.0 * 3 * 4 * 66 * 4);
  EXPECT_DOUBLE_EQ(cp.comm_bytes_prefill_token_ring, 2.0 * 3 / 4 * 4 * 66 * 4);
  // Absorbed attention per key 2·H·(2·rk + dr), over 3 keys.
  EXPECT_DOUBLE_EQ(cp.decode_attention_flops, 3.0 * 2 * 4 * (2 * 64 + 16) * 3);
  const ParallelCosts dp = Costs(config, ParallelMode::kData, 4, 3, 10);
  EXPECT_EQ(dp.sequences_per_rank, 1);
  EXPECT_DOUBLE_EQ(dp.cache_bytes, 1.0 * 10 * 160);
  EXPECT_DOUBLE_EQ(dp.comm_bytes_decode_step, 3.0 * 96 * 4);  // a rank with 0 sequences
}

// DeepSeek-V3, tp over 8 ranks, fp8 weights (128x128 blocks), bf16 latent cache, B 256,
// T 32768, by hand: D 7168, H 128 -> 16 per rank, rq 1536, rk 512, dn 128, dr 64, dv 128.
//   q_a_proj   1536 x 7168 = 11010048   scales 12 x 56 = 672
//   q_b_proj   16·192 = 3072 x 1536 =  4718592   scales 24 x 12 = 288
//   kv_a_proj   576 x 7168 =  4128768   scales  5 x 56 = 280
//   kv_b_proj  16·256 = 4096 x 512 =  2097152   scales 32 x 4 = 128
//   o_proj     7168 x 16·128 = 2048 = 14680064   scales 56 x 16 = 896
//   fp8 bytes 36634624 + scales 2264·4 = 9056 + norms (1536 + 512)·4 = 8192 -> 36651872.
//   cache: 256 · 32768 · 576 · 2 = 9663676416 bytes per layer on every rank.
//   comm: 7 · 256 · 7168 · 4 = 51380224 received; ring 2·7/8 · 256·7168·4 = 12845056.
//   FLOPs per token: q 2·7168·1536 + 2·1536·16·192 = 31457280, kv_a 2·7168·576 = 8257536,
//   absorption 2·16·128·512 · 2 = 4194304, o 2·16·128·7168 = 29360128 -> 73269248;
//   attention 2·16·(2·512 + 64)·32768 = 1140850688.
TEST(ParallelCostsTest, DeepSeekV3TensorParallelByHand) {
  const ModelConfig v3 = LoadPreset("deepseek-v3");
  const ParallelCosts tp =
      Costs(v3, ParallelMode::kTensor, 8, 256, 32768, DType::kF8E4M3, DType::kBF16);
  EXPECT_DOUBLE_EQ(tp.weight_bytes, 36651872.0);
  EXPECT_DOUBLE_EQ(tp.cache_bytes, 9663676416.0);
  EXPECT_DOUBLE_EQ(tp.comm_bytes_decode_step, 51380224.0);
  EXPECT_DOUBLE_EQ(tp.comm_bytes_decode_step_ring, 12845056.0);
  EXPECT_DOUBLE_EQ(tp.decode_projection_flops, 256.0 * 73269248);
  EXPECT_DOUBLE_EQ(tp.decode_attention_flops, 256.0 * 1140850688);
  // dp at 8 ranks holds 1/8 of the sequences' latent cache and the whole layer.
  const ParallelCosts dp =
      Costs(v3, ParallelMode::kData, 8, 256, 32768, DType::kF8E4M3, DType::kBF16);
  EXPECT_DOUBLE_EQ(dp.cache_bytes, 9663676416.0 / 8);
  EXPECT_GT(dp.weight_bytes, 5 * tp.weight_bytes);
  // Step bound: (weights + cache) at 200 GB/s plus the received bytes at 25 GB/s.
  EXPECT_DOUBLE_EQ(tp.DecodeStepSeconds(200.0, 25.0),
                   (36651872.0 + 9663676416.0) / 200e9 + 51380224.0 / 25e9);
}

TEST(ParallelCostsTest, RefusesWorldsThatCannotSplitAndBadSizes) {
  const ModelConfig gqa = SmallGqaConfig(4, 2);
  ExpectError([&] { Costs(gqa, ParallelMode::kTensor, 3, 1, 1); }, ErrorKind::kInvalidArgument,
              {"3 ranks do not divide 4 query heads"});
  // H 12, G 4 over 6 ranks: 6 divides 12 but neither of 4 and 6 divides the other.
  ExpectError([&] { Costs(SmallGqaConfig(12, 4), ParallelMode::kTensor, 6, 1, 1); },
              ErrorKind::kInvalidArgument, {"4 kv heads cannot be replicated", "6 ranks"});
  ExpectError([&] { Costs(SmallMlaConfig(32), ParallelMode::kTensor, 8, 1, 1); },
              ErrorKind::kInvalidArgument, {"8 ranks do not divide 4 query heads"});
  // dp and cp split sequences and tokens, not heads: any world works.
  EXPECT_EQ(Costs(gqa, ParallelMode::kData, 3, 1, 1).sequences_per_rank, 1);
  EXPECT_EQ(Costs(gqa, ParallelMode::kContext, 3, 1, 1).tokens_per_rank, 1);
  for (ParallelMode mode : {ParallelMode::kTensor, ParallelMode::kData, ParallelMode::kContext}) {
    ExpectError([&] { Costs(gqa, mode, 0, 1, 1); }, ErrorKind::kInvalidArgument,
                {"world (0) must be >= 1"});
  }
  ExpectError([&] { Costs(gqa, ParallelMode::kData, 2, 0, 1); }, ErrorKind::kInvalidArgument,
              {"batch (0)"});
  ExpectError([&] { Costs(gqa, ParallelMode::kData, 2, 1, 0); }, ErrorKind::kInvalidArgument,
              {"context (0)"});
  ExpectError([&] { Costs(gqa, ParallelMode::kData, 2, 1, 1, DType::kI32); },
              ErrorKind::kInvalidArgument, {"weights are held as"});
  ExpectError([&] { Costs(gqa, ParallelMode::kData, 2, 1, 1, DType::kF32, DType::kF8E4M3); },
              ErrorKind::kInvalidArgument, {"KV cache is f32, f16 or bf16"});
}

}  // namespace
}  // namespace attn
