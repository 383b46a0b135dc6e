// SPDX-License-Identifier: Apache-2.0
// Tensor parallelism (attn/parallel.h): the weight slices (Weight::ColumnSlice,
// ShardAttentionWeights), loading only a rank's slice (LoadAttentionWeightShard) and the layer
// that sums the ranks' partial outputs (MakeTensorParallelLayer). The oracle throughout is the
// single-process layer built from the same (stored) weights: the ranks' outputs must equal it up
// to fp32 rounding, relative error (max |a - b| / max |b|) below kTolerance = 1e-5; only the
// order of the o_proj sum differs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "attn/checkpoint.h"
#include "attn/communicator.h"
#include "attn/error.h"
#include "attn/hf_weights.h"
#include "attn/layer_weights.h"
#include "attn/parallel.h"
#include "attn/safetensors.h"
#include "split_layer_test_util.h"
#include "test_util.h"

namespace attn {
namespace {

using testing::ExpectError;
using testing::RelativeError;

constexpr double kTolerance = 1e-5;

// ---------------------------------------------------------------------------------------------
// Weight::ColumnSlice

TEST(ColumnSliceTest, CopiesTheColumnsInTheStoredDtype) {
  const Tensor values = RandomUniform({5, 12}, 3, 1.0f);
  for (const DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    const Weight stored = StoreMatrix(values.Copy(), dtype);
    const Weight slice = stored.ColumnSlice(4, 6);
    EXPECT_EQ(slice.dtype(), dtype);
    EXPECT_EQ(slice.shape(), (Shape{5, 6}));
    const Tensor all = stored.ToF32();
    const Tensor part = slice.ToF32();
    for (int64_t r = 0; r < 5; ++r) {
      for (int64_t c = 0; c < 6; ++c) {
        EXPECT_EQ(part.data()[r * 6 + c], all.data()[r * 12 + 4 + c]) << DTypeName(dtype);
      }
    }
  }
}

TEST(ColumnSliceTest, Fp8KeepsItsBlockScales) {
  // 40 columns in blocks of 16: the last block is ragged (8 columns), and a slice ending there
  // may take it.
  const Tensor values = RandomUniform({20, 40}, 4, 3.0f);
  const Weight fp8 = QuantizeF8E4M3Blocks(values, 8, 16);
  const Tensor all = fp8.ToF32();
  const Weight slice = fp8.ColumnSlice(16, 24);
  EXPECT_EQ(slice.dtype(), DType::kF8E4M3);
  EXPECT_EQ(slice.block_scale_shape(), (Shape{3, 2}));
  const Tensor part = slice.ToF32();
  for (int64_t r = 0; r < 20; ++r) {
    for (int64_t c = 0; c < 24; ++c) {
      EXPECT_EQ(part.data()[r * 24 + c], all.data()[r * 40 + 16 + c]);
    }
  }
  ExpectError([&] { fp8.ColumnSlice(8, 16); }, ErrorKind::kInvalidArgument,
              {"columns [8, 24)", "16 columns"});
  ExpectError([&] { fp8.ColumnSlice(32, 9); }, ErrorKind::kInvalidArgument, {"outside"});
}

// ---------------------------------------------------------------------------------------------
// Configs and inputs

// Every GQA tensor kind at once: q/k/v biases, o_proj bias, sinks and per-head q/k norms.
ModelConfig FullGqaConfig(int64_t heads, int64_t kv_heads) {
  ModelConfig config = testing::SmallGqaConfig(heads, kv_heads);
  config.gqa.qkv_bias = true;
  config.gqa.o_bias = true;
  config.gqa.attention_sinks = true;
  config.gqa.qk_norm = QkNorm::kPerHead;
  return config;
}

struct Case {
  std::string name;
  ModelConfig config;
  std::vector<int> worlds;
};

std::vector<Case> Cases() {
  return {
      {"mha", testing::SmallGqaConfig(4, 4), {1, 2, 4}},
      {"gqa_g4", FullGqaConfig(8, 4), {1, 2, 4}},
      {"gqa_g2_replicated", FullGqaConfig(8, 2), {1, 2, 4}},
      {"mqa_replicated", testing::SmallGqaConfig(4, 1), {2, 4}},
      {"mla", testing::SmallMlaConfig(0), {1, 2, 4}},
      {"mla_q_lora", testing::SmallMlaConfig(32), {1, 2, 4}},
  };
}

std::vector<MlaForm> FormsOf(const ModelConfig& config) {
  if (config.kind == AttentionKind::kGqa) return {MlaForm::kAuto};
  return {MlaForm::kNaive, MlaForm::kAbsorbed, MlaForm::kAuto};
}

// Two sequences of 6 tokens, the second left-padded by 2 (keep 0, positions starting at 0 after
// the padding), as a batched generate() lays them out.
struct PaddedBatch {
  Tensor x;
  std::vector<int64_t> positions;
  std::vector<uint8_t> keep;
  TokenBatch batch() const { return TokenBatch{&x, positions, keep}; }
};
PaddedBatch LeftPadded(const ModelConfig& config, uint64_t seed) {
  PaddedBatch p;
  p.x = RandomUniform({2, 6, config.hidden_size}, seed, 1.0f);
  p.positions = {0, 1, 2, 3, 4, 5, 0, 0, 0, 1, 2, 3};
  p.keep = {1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1};
  return p;
}

// The sum over ranks of the partial outputs of local layers built from ShardAttentionWeights,
// with no communicator: the shard arithmetic alone.
Tensor SumOfShardOutputs(const ModelConfig& config, const NamedWeights& weights, int world,
                         const TokenBatch& batch, MlaForm form) {
  Tensor sum;
  for (int rank = 0; rank < world; ++rank) {
    const Shard shard{rank, world};
    const std::unique_ptr<AttentionLayer> local = BuildAttentionLayer(
        TensorParallelConfig(config, shard), 0, ShardAttentionWeights(config, weights, shard));
    const Tensor out = local->PrefillThenDecode(batch, 3, form, DType::kF32);
    if (rank == 0) {
      sum = out.Copy();
    } else {
      for (int64_t i = 0; i < sum.size(); ++i) sum.data()[i] += out.data()[i];
    }
  }
  return sum;
}

TEST(ShardAttentionWeightsTest, PartialOutputsSumToTheWholeLayer) {
  for (const Case& c : Cases()) {
    const NamedWeights weights = ToNamedWeights(RandomAttentionWeights(c.config, 11));
    const PaddedBatch input = LeftPadded(c.config, 12);
    for (const MlaForm form : FormsOf(c.config)) {
      const Tensor expected = BuildAttentionLayer(c.config, 0, weights)
                                  ->PrefillThenDecode(input.batch(), 3, form, DType::kF32);
      for (const int world : c.worlds) {
        const Tensor sum = SumOfShardOutputs(c.config, weights, world, input.batch(), form);
        EXPECT_LT(RelativeError(sum, expected), kTolerance)
            << c.name << " world " << world << " " << MlaFormName(form);
      }
    }
  }
}

TEST(ShardAttentionWeightsTest, SlicesAreTheRanksRowsAndColumns) {
  const ModelConfig config = FullGqaConfig(8, 2);
  const NamedWeights weights = ToNamedWeights(RandomAttentionWeights(config, 1));
  // World 4 with G = 2: rank 3 holds query heads 6, 7 and kv head 1 (shared with rank 2).
  const NamedWeights shard = ShardAttentionWeights(config, weights, Shard{3, 4});
  const int64_t d = 16;
  EXPECT_EQ(shard.at("q_proj.weight").data(),
            static_cast<const float*>(weights.at("q_proj.weight").data()) + 6 * d * 64);
  EXPECT_EQ(shard.at("k_proj.weight").data(),
            static_cast<const float*>(weights.at("k_proj.weight").data()) + 1 * d * 64);
  EXPECT_EQ(shard.at("k_proj.weight").shape(), (Shape{d, 64}));
  EXPECT_EQ(shard.at("o_proj.weight").shape(), (Shape{64, 2 * d}));
  EXPECT_EQ(shard.at("o_proj.weight").f32()[0], weights.at("o_proj.weight").f32()[6 * d]);
  EXPECT_EQ(shard.at("sinks").f32()[0], weights.at("sinks").f32()[6]);
  EXPECT_EQ(shard.at("q_norm.weight").shape(), (Shape{d}));
  // o_proj's bias is added once, by rank 0.
  const Tensor bias = shard.at("o_proj.bias").ToF32();
  for (int64_t i = 0; i < bias.size(); ++i) EXPECT_EQ(bias.data()[i], 0.0f);
  const NamedWeights first = ShardAttentionWeights(config, weights, Shard{0, 4});
  EXPECT_EQ(first.at("o_proj.bias").f32()[0], weights.at("o_proj.bias").f32()[0]);
}

TEST(ShardAttentionWeightsTest, StoredBf16AndFp8WeightsShardAndMatch) {
  ModelConfig gqa = FullGqaConfig(8, 2);
  gqa.quantization.block_rows = 16;
  gqa.quantization.block_cols = 16;
  ModelConfig mla = testing::SmallMlaConfig(32);
  mla.quantization.block_rows = 8;  // per-head rows 48 (q) and 56 (kv_b), columns 24 (o_proj)
  mla.quantization.block_cols = 8;
  for (const ModelConfig& config : {gqa, mla}) {
    for (const DType dtype : {DType::kBF16, DType::kF8E4M3}) {
      const NamedWeights stored =
          StoreAttentionWeights(config, RandomAttentionWeights(config, 21), dtype);
      const PaddedBatch input = LeftPadded(config, 22);
      const MlaForm form = MlaForm::kAuto;
      const Tensor expected = BuildAttentionLayer(config, 0, stored)
                                  ->PrefillThenDecode(input.batch(), 3, form, DType::kF32);
      for (const int world : {2, 4}) {
        const NamedWeights shard = ShardAttentionWeights(config, stored, Shard{world - 1, world});
        const std::string matrix =
            config.kind == AttentionKind::kGqa ? "q_proj.weight" : "q_b_proj.weight";
        EXPECT_EQ(shard.at(matrix).dtype(), dtype);
        EXPECT_EQ(shard.at("o_proj.weight").dtype(), dtype);
        const Tensor sum = SumOfShardOutputs(config, stored, world, input.batch(), form);
        EXPECT_LT(RelativeError(sum, expected), kTolerance)
            << config.model_type << " " << DTypeName(dtype) << " world " << world;
      }
    }
  }
}

TEST(ShardAttentionWeightsTest, Fp8CutInsideABlockIsUnsupported) {
  ModelConfig config = testing::SmallMlaConfig(32);
  config.quantization.block_rows = 16;  // kv_b_proj: 56 rows per head, not a multiple of 16
  config.quantization.block_cols = 16;
  const NamedWeights stored =
      StoreAttentionWeights(config, RandomAttentionWeights(config, 2), DType::kF8E4M3);
  ExpectError(
      [&] {
        ShardAttentionWeights(config, stored, Shard{1, 4});
      },
      ErrorKind::kUnsupported, {"kv_b_proj.weight", "rows [56, 112)", "16 rows"});
}

TEST(ShardAttentionWeightsTest, RefusesWhatHeadsCannotSplit) {
  const ModelConfig six = testing::SmallGqaConfig(6, 6);
  const NamedWeights six_weights = ToNamedWeights(RandomAttentionWeights(six, 1));
  ExpectError(
      [&] {
        ShardAttentionWeights(six, six_weights, Shard{0, 4});
      },
      ErrorKind::kInvalidArgument, {"4 ranks", "6 query heads"});

  ModelConfig olmo2 = testing::SmallGqaConfig(4, 4);
  olmo2.gqa.qk_norm = QkNorm::kWholeProjection;
  const NamedWeights olmo2_weights = ToNamedWeights(RandomAttentionWeights(olmo2, 1));
  ExpectError(
      [&] {
        ShardAttentionWeights(olmo2, olmo2_weights, Shard{0, 2});
      },
      ErrorKind::kUnsupported, {"whole projection"});

  ModelConfig alibi = testing::SmallGqaConfig(4, 4);
  alibi.gqa.alibi = true;
  ExpectError(
      [&] {
        ShardAttentionWeights(alibi, NamedWeights(), Shard{0, 2});
      },
      ErrorKind::kUnsupported, {"ALiBi"});

  const ModelConfig gqa = testing::SmallGqaConfig(4, 2);
  NamedWeights misshapen = ToNamedWeights(RandomAttentionWeights(gqa, 1));
  misshapen["k_proj.weight"] = Weight(Tensor({8, 64}));
  ExpectError(
      [&] {
        ShardAttentionWeights(gqa, misshapen, Shard{1, 2});
      },
      ErrorKind::kInvalidArgument, {"k_proj.weight", "[32, 64]"});
}

// ---------------------------------------------------------------------------------------------
// LoadAttentionWeightShard

class LoadShardTest : public testing::ScratchDirTest {};

TEST_F(LoadShardTest, RanksLoadTheirSlicesAsViewsOfTheFile) {
  ModelConfig config = testing::SmallMlaConfig(32);
  config.quantization.fp8_blocks = true;
  config.quantization.block_rows = 8;
  config.quantization.block_cols = 8;
  for (const DType dtype : {DType::kBF16, DType::kF8E4M3}) {
    SafetensorsWriter writer;
    AddHfAttentionWeights(writer, config, RandomAttentionWeights(config, 5), 1, dtype);
    const std::string path = PathOf(std::string("layer_") + DTypeName(dtype) + ".safetensors");
    writer.Write(path);
    const Checkpoint checkpoint = Checkpoint::Open(path);
    const NamedWeights whole = LoadHfAttentionWeights(checkpoint, config, 1);
    const PaddedBatch input = LeftPadded(config, 6);
    const Tensor expected = BuildAttentionLayer(config, 1, whole)
                                ->PrefillThenDecode(input.batch(), 3, MlaForm::kAuto, DType::kF32);
    const int world = 2;
    Tensor sum;
    for (int rank = 0; rank < world; ++rank) {
      const Shard shard{rank, world};
      NamedWeights mine = LoadAttentionWeightShard(checkpoint, config, 1, shard);
      // Row slices point into the same mapping as the whole load: no copy was made.
      const int64_t rows = 2 * (32 + 16);  // 2 heads of dn + dr
      EXPECT_EQ(static_cast<const std::byte*>(mine.at("q_b_proj.weight").data()),
                static_cast<const std::byte*>(whole.at("q_b_proj.weight").data()) +
                    rank * rows * 32 * DTypeSize(dtype));
      const Tensor out =
          BuildAttentionLayer(TensorParallelConfig(config, shard), 1, std::move(mine))
              ->PrefillThenDecode(input.batch(), 3, MlaForm::kAuto, DType::kF32);
      if (rank == 0) {
        sum = out.Copy();
      } else {
        for (int64_t i = 0; i < sum.size(); ++i) sum.data()[i] += out.data()[i];
      }
    }
    EXPECT_LT(RelativeError(sum, expected), kTolerance) << DTypeName(dtype);
  }
}

TEST_F(LoadShardTest, ScansOnlyTheRanksOwnRows) {
  const ModelConfig config = testing::SmallGqaConfig(4, 2);
  NamedTensors weights = RandomAttentionWeights(config, 5);
  // A NaN in q_proj row 40: query head 2, rank 1's of 2.
  weights.at("q_proj.weight").data()[40 * 64 + 3] = std::numeric_limits<float>::quiet_NaN();
  SafetensorsWriter writer;
  AddHfAttentionWeights(writer, config, weights, 0, DType::kF32);
  const std::string path = PathOf("nan.safetensors");
  writer.Write(path);
  const Checkpoint checkpoint = Checkpoint::Open(path);
  ExpectError([&] { LoadHfAttentionWeights(checkpoint, config, 0); }, ErrorKind::kInvalidArgument,
              {"q_proj.weight", "non-finite"});
  EXPECT_NO_THROW(LoadAttentionWeightShard(checkpoint, config, 0, Shard{0, 2}));
  ExpectError(
      [&] {
        LoadAttentionWeightShard(checkpoint, config, 0, Shard{1, 2});
      },
      ErrorKind::kInvalidArgument, {"model.layers.0.self_attn.q_proj.weight", "slice"});
  ExpectError(
      [&] {
        LoadAttentionWeightShard(checkpoint, config, 0, Shard{2, 2});
      },
      ErrorKind::kInvalidArgument, {"rank 2 of world 2"});
}

TEST_F(LoadShardTest, FusedQkvFormatsShard) {
  // Phi-3's stacked qkv_proj (row views of it, sliced again) and Falcon's fused
  // query_key_value (read whole as fp32 and split, then sliced).
  for (const std::string family : {"phi3", "falcon"}) {
    ModelConfig config = testing::SmallGqaConfig(4, 2);
    config.model_type = family;
    SafetensorsWriter writer;
    AddHfAttentionWeights(writer, config, RandomAttentionWeights(config, 7), 0, DType::kBF16);
    const std::string path = PathOf(family + ".safetensors");
    writer.Write(path);
    const Checkpoint checkpoint = Checkpoint::Open(path);
    const PaddedBatch input = LeftPadded(config, 8);
    const Tensor expected =
        BuildAttentionLayer(config, 0, LoadHfAttentionWeights(checkpoint, config, 0))
            ->PrefillThenDecode(input.batch(), 3, MlaForm::kAuto, DType::kF32);
    for (const int world : {2, 4}) {
      Tensor sum;
      for (int rank = 0; rank < world; ++rank) {
        const Shard shard{rank, world};
        const Tensor out =
            BuildAttentionLayer(TensorParallelConfig(config, shard), 0,
                                LoadAttentionWeightShard(checkpoint, config, 0, shard))
                ->PrefillThenDecode(input.batch(), 3, MlaForm::kAuto, DType::kF32);
        if (rank == 0) {
          sum = out.Copy();
        } else {
          for (int64_t i = 0; i < sum.size(); ++i) sum.data()[i] += out.data()[i];
        }
      }
      EXPECT_LT(RelativeError(sum, expected), kTolerance) << family << " world " << world;
    }
  }
}

TEST_F(LoadShardTest, OProjCopiedInBandsEqualsTheColumnSlice) {
  // o_proj [512, 4096]: the loader copies it a band of about 1 MiB of rows at a time (64 rows
  // of f32, 256 of fp8, whole 128-row scale blocks), releasing each band's mapped pages.
  ModelConfig config = testing::SmallGqaConfig(32, 8);
  config.hidden_size = 512;
  config.gqa.head_dim = 128;
  config.rope.rotary_dim = 128;
  config.quantization.fp8_blocks = true;
  const NamedTensors weights = RandomAttentionWeights(config, 8);
  for (const DType dtype : {DType::kF32, DType::kF8E4M3}) {
    SafetensorsWriter writer;
    AddHfAttentionWeights(writer, config, weights, 0, dtype);
    const std::string path = PathOf(std::string("big_") + DTypeName(dtype) + ".safetensors");
    writer.Write(path);
    const Checkpoint checkpoint = Checkpoint::Open(path);
    for (const int rank : {0, 1}) {
      const Shard shard{rank, 2};
      const NamedWeights expected =
          ShardAttentionWeights(config, LoadHfAttentionWeights(checkpoint, config, 0), shard);
      const NamedWeights got = LoadAttentionWeightShard(checkpoint, config, 0, shard);
      const Weight& want = expected.at("o_proj.weight");
      const Weight& have = got.at("o_proj.weight");
      ASSERT_EQ(have.shape(), (Shape{512, 2048}));
      ASSERT_EQ(have.dtype(), dtype);
      EXPECT_EQ(have.block_scale_shape(), want.block_scale_shape());
      EXPECT_EQ(std::memcmp(have.data(), want.data(), want.size() * DTypeSize(dtype)), 0);
      EXPECT_EQ(RelativeError(have.ToF32(), want.ToF32()), 0.0) << DTypeName(dtype);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// MakeTensorParallelLayer over an in-process group

TEST(TensorParallelLayerTest, EveryRankReturnsTheWholeOutput) {
  for (const Case& c : Cases()) {
    const NamedWeights weights = ToNamedWeights(RandomAttentionWeights(c.config, 31));
    const std::unique_ptr<AttentionLayer> single = BuildAttentionLayer(c.config, 0, weights);
    const PaddedBatch input = LeftPadded(c.config, 32);
    // Ragged: sequence 0 adds 5 tokens, sequence 1 adds 2, then one decode token each.
    const Tensor ragged_x = RandomUniform({2, 5, c.config.hidden_size}, 33, 1.0f);
    const std::vector<int64_t> ragged_lengths = {5, 2};
    const Tensor next_x = RandomUniform({2, 1, c.config.hidden_size}, 34, 1.0f);
    for (const MlaForm form : FormsOf(c.config)) {
      const Tensor expected = single->PrefillThenDecode(input.batch(), 3, form, DType::kF32);
      const Tensor forward = single->Forward(input.batch(), form);
      const std::unique_ptr<Cache> cache = single->NewCache(2, 8, DType::kF32, form);
      const Tensor ragged = single->Step({&ragged_x, {}, {}, ragged_lengths}, *cache, form);
      const Tensor next = single->Step({&next_x, {}, {}}, *cache, form);
      for (const int world : c.worlds) {
        testing::RunRanks(world, [&](int rank, std::shared_ptr<Communicator> comm) {
          const Shard shard{rank, world};
          const std::unique_ptr<AttentionLayer> layer = MakeTensorParallelLayer(
              c.config, 0, ShardAttentionWeights(c.config, weights, shard), comm);
          EXPECT_EQ(layer->config().num_heads, c.config.num_heads);
          const std::string where =
              c.name + " world " + std::to_string(world) + " rank " + std::to_string(rank);
          EXPECT_LT(RelativeError(layer->PrefillThenDecode(input.batch(), 3, form, DType::kF32),
                                  expected),
                    kTolerance)
              << where;
          EXPECT_LT(RelativeError(layer->Forward(input.batch(), form), forward), kTolerance)
              << where;
          const std::unique_ptr<Cache> local = layer->NewCache(2, 8, DType::kF32, form);
          EXPECT_LT(
              RelativeError(layer->Step({&ragged_x, {}, {}, ragged_lengths}, *local, form), ragged),
              kTolerance)
              << where;
          EXPECT_LT(RelativeError(layer->Step({&next_x, {}, {}}, *local, form), next), kTolerance)
              << where;
        });
      }
    }
  }
}

TEST(TensorParallelLayerTest, StoredFp8WeightsThroughTheGroup) {
  ModelConfig config = testing::SmallMlaConfig(32);
  config.quantization.block_rows = 8;
  config.quantization.block_cols = 8;
  const NamedWeights stored =
      StoreAttentionWeights(config, RandomAttentionWeights(config, 71), DType::kF8E4M3);
  const PaddedBatch input = LeftPadded(config, 72);
  const Tensor expected =
      BuildAttentionLayer(config, 0, stored)
          ->PrefillThenDecode(input.batch(), 2, MlaForm::kAbsorbed, DType::kBF16);
  testing::RunRanks(4, [&](int rank, std::shared_ptr<Communicator> comm) {
    const auto layer = MakeTensorParallelLayer(
        config, 0, ShardAttentionWeights(config, stored, Shard{rank, 4}), comm);
    // A bf16 cache holds the same rounded latent rows on every rank as in one process.
    EXPECT_LT(
        RelativeError(layer->PrefillThenDecode(input.batch(), 2, MlaForm::kAbsorbed, DType::kBF16),
                      expected),
        kTolerance);
  });
}

TEST(TensorParallelLayerTest, CachesHoldTheRanksHeadsOnly) {
  const ModelConfig gqa = testing::SmallGqaConfig(8, 4);
  const NamedWeights weights = ToNamedWeights(RandomAttentionWeights(gqa, 3));
  const ModelConfig mla = testing::SmallMlaConfig(0);
  const NamedWeights mla_weights = ToNamedWeights(RandomAttentionWeights(mla, 3));
  testing::RunRanks(2, [&](int rank, std::shared_ptr<Communicator> comm) {
    const Shard shard{rank, 2};
    const auto layer =
        MakeTensorParallelLayer(gqa, 0, ShardAttentionWeights(gqa, weights, shard), comm);
    // 2 of 4 kv heads of 16: K and V, 64 values per token.
    EXPECT_EQ(layer->NewCache(1, 4, DType::kF32, MlaForm::kAuto)->bytes_per_token(),
              2 * 2 * 16 * sizeof(float));
    EXPECT_EQ(layer->NewPagedPool(4, 16, DType::kF32, MlaForm::kAuto)->kv_heads(), 2);
    const auto latent =
        MakeTensorParallelLayer(mla, 0, ShardAttentionWeights(mla, mla_weights, shard), comm);
    // The latent is replicated: rk + dr per token on every rank.
    EXPECT_EQ(latent->NewCache(1, 4, DType::kF32, MlaForm::kAbsorbed)->bytes_per_token(),
              (64 + 16) * sizeof(float));
  });
}

TEST(TensorParallelLayerTest, PagedStepsMatchTheSingleLayer) {
  for (const ModelConfig& config : {FullGqaConfig(8, 2), testing::SmallMlaConfig(32)}) {
    const NamedWeights weights = ToNamedWeights(RandomAttentionWeights(config, 41));
    const std::unique_ptr<AttentionLayer> single = BuildAttentionLayer(config, 0, weights);
    const Tensor prompt = RandomUniform({2, 5, config.hidden_size}, 42, 1.0f);
    const Tensor next = RandomUniform({2, 1, config.hidden_size}, 43, 1.0f);
    const MlaForm form = MlaForm::kAuto;
    auto run = [&](const AttentionLayer& layer) {
      const std::unique_ptr<PagedKVPool> pool = layer.NewPagedPool(8, 16, DType::kF32, form);
      const std::vector<PagedKVPool::SequenceId> ids = {pool->Add(), pool->Add()};
      Tensor first;
      Tensor second;
      layer.StepPagedInto({&prompt, {}, {}}, *pool, ids, form, first);
      layer.StepPagedInto({&next, {}, {}}, *pool, ids, form, second);
      return std::make_pair(std::move(first), std::move(second));
    };
    const auto expected = run(*single);
    testing::RunRanks(4, [&](int rank, std::shared_ptr<Communicator> comm) {
      const auto layer = MakeTensorParallelLayer(
          config, 0, ShardAttentionWeights(config, weights, Shard{rank, 4}), comm);
      const auto got = run(*layer);
      EXPECT_LT(RelativeError(got.first, expected.first), kTolerance);
      EXPECT_LT(RelativeError(got.second, expected.second), kTolerance);
    });
  }
}

TEST(TensorParallelLayerTest, RanksDisagreeingOnTheConfigFailEverywhere) {
  const ModelConfig config = testing::SmallGqaConfig(4, 2);
  ModelConfig other = config;
  other.rope.theta = 500000.0;
  const NamedWeights weights = ToNamedWeights(RandomAttentionWeights(config, 1));
  const std::vector<std::exception_ptr> errors =
      testing::RunRanksCollectingErrors(2, [&](int rank, std::shared_ptr<Communicator> comm) {
        const ModelConfig& mine = rank == 0 ? config : other;
        MakeTensorParallelLayer(mine, 0, ShardAttentionWeights(mine, weights, Shard{rank, 2}),
                                comm);
      });
  for (const std::exception_ptr& error : errors) {
    ExpectError([&] { std::rethrow_exception(error); }, ErrorKind::kCommunication,
                {"model config"});
  }
}

TEST(TensorParallelLayerTest, OneRanksBadWeightsFailEveryRank) {
  const ModelConfig config = testing::SmallGqaConfig(4, 2);
  const NamedWeights weights = ToNamedWeights(RandomAttentionWeights(config, 1));
  const std::vector<std::exception_ptr> errors =
      testing::RunRanksCollectingErrors(2, [&](int rank, std::shared_ptr<Communicator> comm) {
        NamedWeights mine = ShardAttentionWeights(config, weights, Shard{rank, 2});
        if (rank == 1) mine.erase("v_proj.weight");
        MakeTensorParallelLayer(config, 0, std::move(mine), comm);
      });
  ASSERT_EQ(errors.size(), 2u);
  ExpectError([&] { std::rethrow_exception(errors[1]); }, ErrorKind::kNotFound, {"v_proj.weight"});
  ExpectError([&] { std::rethrow_exception(errors[0]); }, ErrorKind::kCommunication,
              {"v_proj.weight"});
}

}  // namespace
}  // namespace attn
