// SPDX-License-Identifier: Apache-2.0
// Data parallelism (MakeDataParallelLayer, DataParallelSequences): each rank runs its block of
// the batch's sequences and every rank returns the whole output. The oracle is the
// single-process layer on the whole batch; outputs must agree to fp32 rounding, relative error
// (max |a - b| / max |b|) below kTolerance = 1e-5 (a sequence's rows are computed by the same
// kernels either way; only the batch they share a call with differs).
#include <gtest/gtest.h>

#include <exception>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "attn/communicator.h"
#include "attn/error.h"
#include "attn/layer_weights.h"
#include "attn/parallel.h"
#include "split_layer_test_util.h"
#include "test_util.h"

namespace attn {
namespace {

using testing::ExpectError;
using testing::RelativeError;

constexpr double kTolerance = 1e-5;

TEST(DataParallelSequencesTest, ContiguousBlocksWithTheRemainderFirst) {
  // 7 over 3: 3, 2, 2.
  EXPECT_EQ(DataParallelSequences(7, Shard{0, 3}).first, 0);
  EXPECT_EQ(DataParallelSequences(7, Shard{0, 3}).count, 3);
  EXPECT_EQ(DataParallelSequences(7, Shard{1, 3}).first, 3);
  EXPECT_EQ(DataParallelSequences(7, Shard{1, 3}).count, 2);
  EXPECT_EQ(DataParallelSequences(7, Shard{2, 3}).first, 5);
  EXPECT_EQ(DataParallelSequences(7, Shard{2, 3}).count, 2);
  // 2 over 4: ranks 2 and 3 idle.
  EXPECT_EQ(DataParallelSequences(2, Shard{1, 4}).first, 1);
  EXPECT_EQ(DataParallelSequences(2, Shard{1, 4}).count, 1);
  EXPECT_EQ(DataParallelSequences(2, Shard{3, 4}).count, 0);
  for (int64_t batch = 0; batch < 9; ++batch) {
    for (int world = 1; world <= 5; ++world) {
      int64_t next = 0;
      for (int rank = 0; rank < world; ++rank) {
        const SequenceRange range = DataParallelSequences(batch, Shard{rank, world});
        EXPECT_EQ(range.first, next);
        next += range.count;
      }
      EXPECT_EQ(next, batch);
    }
  }
  ExpectError(
      [] {
        DataParallelSequences(3, Shard{2, 2});
      },
      ErrorKind::kInvalidArgument, {"rank 2 of world 2"});
}

struct Case {
  std::string name;
  ModelConfig config;
};

std::vector<Case> Cases() {
  ModelConfig gqa = testing::SmallGqaConfig(8, 2);
  gqa.gqa.qkv_bias = true;
  gqa.gqa.o_bias = true;
  return {{"gqa", gqa},
          {"mla", testing::SmallMlaConfig(0)},
          {"mla_q_lora", testing::SmallMlaConfig(32)}};
}

std::vector<MlaForm> FormsOf(const ModelConfig& config) {
  if (config.kind == AttentionKind::kGqa) return {MlaForm::kAuto};
  return {MlaForm::kNaive, MlaForm::kAbsorbed};
}

// Three sequences of 5 tokens, the last two left-padded (by 1 and 3).
struct Inputs {
  Tensor x;
  std::vector<int64_t> positions = {0, 1, 2, 3, 4, 0, 0, 1, 2, 3, 0, 0, 0, 0, 1};
  std::vector<uint8_t> keep = {1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1};
  // A ragged step, a packed step (sequence 1 idle: at world 3 its rank has no row) and a decode
  // step over the same cache.
  Tensor ragged_x;
  std::vector<int64_t> ragged_lengths = {4, 0, 2};
  Tensor packed_x;
  std::vector<int64_t> packed_lengths = {2, 0, 1};
  Tensor decode_x;
};
Inputs MakeInputs(const ModelConfig& config) {
  Inputs in;
  in.x = RandomUniform({3, 5, config.hidden_size}, 51, 1.0f);
  in.ragged_x = RandomUniform({3, 4, config.hidden_size}, 52, 1.0f);
  in.packed_x = RandomUniform({3, config.hidden_size}, 53, 1.0f);
  in.decode_x = RandomUniform({3, 1, config.hidden_size}, 54, 1.0f);
  return in;
}

struct Outputs {
  Tensor prefill_then_decode;
  Tensor forward;
  Tensor ragged;
  Tensor packed;
  Tensor decode;
};
Outputs RunAll(const AttentionLayer& layer, const Inputs& in, MlaForm form) {
  Outputs out;
  const TokenBatch padded{&in.x, in.positions, in.keep};
  out.prefill_then_decode = layer.PrefillThenDecode(padded, 2, form, DType::kF32);
  out.forward = layer.Forward(padded, form);
  const std::unique_ptr<Cache> cache = layer.NewCache(3, 12, DType::kF32, form);
  out.ragged = layer.Step({&in.ragged_x, {}, {}, in.ragged_lengths}, *cache, form);
  out.packed = layer.Step({&in.packed_x, {}, {}, in.packed_lengths}, *cache, form);
  out.decode = layer.Step({&in.decode_x, {}, {}}, *cache, form);
  EXPECT_EQ(cache->length(0), 7);
  EXPECT_EQ(cache->length(1), 1);
  EXPECT_EQ(cache->length(2), 4);
  return out;
}

TEST(DataParallelLayerTest, EveryRankReturnsTheWholeBatch) {
  for (const Case& c : Cases()) {
    const NamedWeights weights = ToNamedWeights(RandomAttentionWeights(c.config, 61));
    const Inputs in = MakeInputs(c.config);
    for (const MlaForm form : FormsOf(c.config)) {
      const Outputs expected = RunAll(*BuildAttentionLayer(c.config, 0, weights), in, form);
      // Batch 3: divisible by 1 and 3, not by 2; world 4 leaves rank 3 idle.
      for (const int world : {1, 2, 3, 4}) {
        testing::RunRanks(world, [&](int rank, std::shared_ptr<Communicator> comm) {
          const auto layer = MakeDataParallelLayer(BuildAttentionLayer(c.config, 0, weights), comm);
          const Outputs got = RunAll(*layer, in, form);
          const std::string where = c.name + " " + MlaFormName(form) + " world " +
                                    std::to_string(world) + " rank " + std::to_string(rank);
          EXPECT_LT(RelativeError(got.prefill_then_decode, expected.prefill_then_decode),
                    kTolerance)
              << where;
          EXPECT_LT(RelativeError(got.forward, expected.forward), kTolerance) << where;
          EXPECT_LT(RelativeError(got.ragged, expected.ragged), kTolerance) << where;
          EXPECT_LT(RelativeError(got.packed, expected.packed), kTolerance) << where;
          EXPECT_LT(RelativeError(got.decode, expected.decode), kTolerance) << where;
        });
      }
    }
  }
}

TEST(DataParallelLayerTest, CacheHoldsTheRanksSequencesOnly) {
  const ModelConfig config = testing::SmallGqaConfig(4, 2);
  const NamedWeights weights = ToNamedWeights(RandomAttentionWeights(config, 1));
  testing::RunRanks(4, [&](int rank, std::shared_ptr<Communicator> comm) {
    const auto layer = MakeDataParallelLayer(BuildAttentionLayer(config, 0, weights), comm);
    const std::unique_ptr<Cache> cache = layer->NewCache(2, 8, DType::kF32, MlaForm::kAuto);
    EXPECT_EQ(cache->batch(), 2);  // the whole batch's bookkeeping on every rank
    // Every rank refuses a bad cache dtype alike, the idle ones included.
    ExpectError([&] { layer->NewCache(2, 8, DType::kI8, MlaForm::kAuto); },
                ErrorKind::kInvalidArgument, {"KV cache dtype"});
    // An overflow is refused on every rank before any collective.
    const Tensor x = RandomUniform({2, 9, config.hidden_size}, 2, 1.0f);
    ExpectError(
        [&] {
          layer->Step({&x, {}, {}}, *cache, MlaForm::kAuto);
        },
        ErrorKind::kCapacity, {"overflow"});
    (void)rank;
  });
}

TEST(DataParallelLayerTest, OneRanksFailedStepFailsEveryRank) {
  const ModelConfig config = testing::SmallGqaConfig(4, 2);
  const NamedWeights weights = ToNamedWeights(RandomAttentionWeights(config, 1));
  const std::vector<std::exception_ptr> errors =
      testing::RunRanksCollectingErrors(2, [&](int, std::shared_ptr<Communicator> comm) {
        const auto layer = MakeDataParallelLayer(BuildAttentionLayer(config, 0, weights), comm);
        const std::unique_ptr<Cache> cache = layer->NewCache(2, 8, DType::kF32, MlaForm::kAuto);
        const Tensor x = RandomUniform({2, 2, config.hidden_size}, 2, 1.0f);
        // Sequence 1 (rank 1's) goes back in position on its second step.
        const std::vector<int64_t> first = {0, 1, 4, 5};
        const std::vector<int64_t> second = {2, 3, 0, 1};
        layer->Step({&x, first, {}}, *cache, MlaForm::kAuto);
        layer->Step({&x, second, {}}, *cache, MlaForm::kAuto);
      });
  ASSERT_EQ(errors.size(), 2u);
  ASSERT_NE(errors[1], nullptr);
  try {
    std::rethrow_exception(errors[1]);
  } catch (const Error& e) {
    EXPECT_NE(e.kind(), ErrorKind::kCommunication) << e.what();  // its own error, unchanged
  }
  ExpectError([&] { std::rethrow_exception(errors[0]); }, ErrorKind::kCommunication, {"rank 1"});
}

TEST(DataParallelLayerTest, RanksDisagreeingOnTheConfigFailEverywhere) {
  const ModelConfig config = testing::SmallGqaConfig(4, 2);
  ModelConfig other = config;
  other.sliding_window = 3;
  const std::vector<std::exception_ptr> errors =
      testing::RunRanksCollectingErrors(3, [&](int rank, std::shared_ptr<Communicator> comm) {
        const ModelConfig& mine = rank == 2 ? other : config;
        MakeDataParallelLayer(BuildAttentionLayer(mine, 0, RandomAttentionWeights(mine, 1)), comm);
      });
  for (const std::exception_ptr& error : errors) {
    ExpectError([&] { std::rethrow_exception(error); }, ErrorKind::kCommunication,
                {"model config"});
  }
}

TEST(DataParallelLayerTest, PagedPoolsArePerRank) {
  const ModelConfig config = testing::SmallGqaConfig(4, 2);
  testing::RunRanks(2, [&](int, std::shared_ptr<Communicator> comm) {
    const auto layer = MakeDataParallelLayer(
        BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 1)), comm);
    const std::unique_ptr<PagedKVPool> pool =
        layer->NewPagedPool(4, 16, DType::kF32, MlaForm::kAuto);
    const std::vector<PagedKVPool::SequenceId> ids = {pool->Add()};
    const Tensor x = RandomUniform({1, 2, config.hidden_size}, 2, 1.0f);
    Tensor out;
    ExpectError(
        [&] {
          layer->StepPagedInto({&x, {}, {}}, *pool, ids, MlaForm::kAuto, out);
        },
        ErrorKind::kUnsupported, {"data parallel", "per rank"});
  });
}

}  // namespace
}  // namespace attn
