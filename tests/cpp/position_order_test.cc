// SPDX-License-Identifier: Apache-2.0
// Position ids only go forward (docs/semantics.md §4): a step with a kept token whose position
// is not after the largest one a contiguous cache or a page pool holds for the sequence is
// refused before anything is written, for the GQA family and MLA, contiguous and paged. The
// order within one call is free, padding tokens' positions are not checked, a fork inherits its
// parent's largest position, and Clear() forgets it.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attn/error.h"
#include "attn/kv_cache.h"
#include "attn/layer.h"
#include "attn/layer_weights.h"
#include "attn/paged_kv_cache.h"
#include "test_util.h"

namespace attn {
namespace {

using testing::ExpectError;
using Id = PagedKVPool::SequenceId;

const std::vector<std::string> kBackwards = {"position_ids go backwards"};

class PositionOrder : public ::testing::TestWithParam<bool> {
 protected:
  ModelConfig Config() const {
    return GetParam() ? testing::SmallMlaConfig(48) : testing::SmallGqaConfig(4, 2);
  }
  MlaForm Form() const { return GetParam() ? MlaForm::kAbsorbed : MlaForm::kAuto; }
};

TEST_P(PositionOrder, ContiguousCacheRefusesPositionsBeforeItsLastOne) {
  const ModelConfig config = Config();
  const auto layer = BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 1));
  auto cache = layer->NewCache(1, 16, DType::kF32, Form());
  const Tensor prompt = RandomUniform({1, 4, config.hidden_size}, 2, 1.0f);
  const std::vector<int64_t> prompt_positions = {10, 11, 12, 13};
  layer->Step({&prompt, prompt_positions, {}}, *cache, Form());
  EXPECT_EQ(cache->max_position(0), 13);

  const Tensor token = RandomUniform({1, 1, config.hidden_size}, 3, 1.0f);
  for (const int64_t stale : {int64_t{13}, int64_t{5}}) {
    const std::vector<int64_t> positions = {stale};
    ExpectError(
        [&] {
          layer->Step({&token, positions, {}}, *cache, Form());
        },
        ErrorKind::kInvalidArgument,
        {"position_ids go backwards", "sequence 0", "not after position 13",
         "already in its cache"});
    EXPECT_EQ(cache->length(0), 4) << "a refused step must leave the cache unchanged";
  }
  // Slot positions after explicit ones that ran ahead: slot 4 < 13.
  ExpectError(
      [&] {
        layer->Step({&token, {}, {}}, *cache, Form());
      },
      ErrorKind::kInvalidArgument, kBackwards);
  const std::vector<int64_t> next = {14};
  layer->Step({&token, next, {}}, *cache, Form());
  EXPECT_EQ(cache->length(0), 5);
  EXPECT_EQ(cache->max_position(0), 14);

  cache->Clear();
  EXPECT_EQ(cache->max_position(0), -1);
  layer->Step({&prompt, {}, {}}, *cache, Form());  // slot positions 0 … 3 again
  EXPECT_EQ(cache->max_position(0), 3);
}

TEST_P(PositionOrder, OrderWithinACallIsFreeAndPaddingIsNotChecked) {
  const ModelConfig config = Config();
  const auto layer = BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 1));
  auto cache = layer->NewCache(2, 16, DType::kF32, Form());
  const Tensor x = RandomUniform({2, 3, config.hidden_size}, 2, 1.0f);
  // Sequence 0 in reverse order, sequence 1 left-padded with transformers' placeholder 1.
  const std::vector<int64_t> positions = {7, 3, 5, 1, 0, 1};
  const std::vector<uint8_t> keep = {1, 1, 1, 0, 1, 1};
  layer->Step({&x, positions, keep}, *cache, Form());
  EXPECT_EQ(cache->max_position(0), 7);
  EXPECT_EQ(cache->max_position(1), 1);

  // The next step: sequence 0 must pass 7 (its largest, not its last), sequence 1 must pass 1;
  // a padded token may carry any position.
  const Tensor step = RandomUniform({2, 1, config.hidden_size}, 3, 1.0f);
  const std::vector<int64_t> after_last = {6, 2};
  ExpectError(
      [&] {
        layer->Step({&step, after_last, {}}, *cache, Form());
      },
      ErrorKind::kInvalidArgument,
      {"position_ids go backwards", "sequence 0, token 0", "position 6", "not after position 7"});
  const std::vector<int64_t> padded_stale = {8, 0};
  const std::vector<uint8_t> pad_second = {1, 0};
  layer->Step({&step, padded_stale, pad_second}, *cache, Form());
  EXPECT_EQ(cache->max_position(0), 8);
  EXPECT_EQ(cache->max_position(1), 1);
  EXPECT_EQ(cache->length(1), 4);
}

TEST_P(PositionOrder, PagedPoolRefusesBackwardsAndForksInherit) {
  const ModelConfig config = Config();
  const auto layer = BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 1));
  auto pool = layer->NewPagedPool(8, 16, DType::kF32, Form());
  const Id a = pool->Add();
  const Id b = pool->Add();
  // Packed: 5 prompt tokens of a, 2 of b.
  const Tensor prompt = RandomUniform({7, config.hidden_size}, 2, 1.0f);
  const std::vector<Id> ids = {a, b};
  const std::vector<int64_t> counts = {5, 2};
  Tensor out;
  layer->StepPagedInto({&prompt, {}, {}, counts}, *pool, ids, Form(), out);
  EXPECT_EQ(pool->max_position(a), 4);
  EXPECT_EQ(pool->max_position(b), 1);

  const Tensor two = RandomUniform({2, config.hidden_size}, 3, 1.0f);
  const std::vector<int64_t> ones = {1, 1};
  const int64_t free_before = pool->free_pages();
  const std::vector<int64_t> backwards = {5, 1};  // a moves on, b repeats position 1
  ExpectError(
      [&] {
        layer->StepPagedInto({&two, backwards, {}, ones}, *pool, ids, Form(), out);
      },
      ErrorKind::kInvalidArgument, {"position_ids go backwards", "sequence 1"});
  EXPECT_EQ(pool->length(a), 5) << "nothing of the refused call may be written";
  EXPECT_EQ(pool->length(b), 2);
  EXPECT_EQ(pool->free_pages(), free_before);

  const Id child = pool->Fork(a);
  EXPECT_EQ(pool->max_position(child), 4);
  const Tensor one = RandomUniform({1, config.hidden_size}, 4, 1.0f);
  const std::vector<Id> child_ids = {child};
  const std::vector<int64_t> count = {1};
  const std::vector<int64_t> stale = {2};
  ExpectError(
      [&] {
        layer->StepPagedInto({&one, stale, {}, count}, *pool, child_ids, Form(), out);
      },
      ErrorKind::kInvalidArgument, {"position 2, not after position 4"});
  layer->StepPagedInto({&one, {}, {}, count}, *pool, child_ids, Form(), out);  // slot 5
  EXPECT_EQ(pool->max_position(child), 5);
  EXPECT_EQ(pool->max_position(a), 4);
}

INSTANTIATE_TEST_SUITE_P(Layers, PositionOrder, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& param) {
                           return param.param ? "Mla" : "Gqa";
                         });

}  // namespace
}  // namespace attn
