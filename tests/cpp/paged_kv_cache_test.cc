// SPDX-License-Identifier: Apache-2.0
// PagedKVPool: the page lifecycle (reserve all or nothing, fork sharing full pages and copying
// the partial one, free returning pages when their last owner goes, ids never reused) and the
// layers over it: paged == contiguous for the GQA family and every MLA form in f32/f16/bf16,
// ragged batches of prefill chunks and decode tokens, fork isolation.
#include "attn/paged_kv_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "attn/error.h"
#include "attn/layer_weights.h"
#include "test_util.h"

namespace attn {
namespace {

using testing::ExpectError;
using testing::RelativeError;
using Id = PagedKVPool::SequenceId;

std::vector<float> Rows(int64_t count, int64_t width, float base) {
  std::vector<float> rows(static_cast<size_t>(count * width));
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = base + static_cast<float>(i);
  return rows;
}

// A sequence's latent rows as fp32.
std::vector<float> Read(const PagedKVPool& pool, Id id) {
  std::vector<float> rows(static_cast<size_t>(pool.length(id) * pool.key_dim()));
  pool.ReadRows(id, rows.data());
  return rows;
}

void Append(PagedKVPool& pool, Id id, int64_t count, float base) {
  const std::vector<Id> ids = {id};
  const std::vector<int64_t> counts = {count};
  pool.Reserve(ids, counts);
  const std::vector<float> rows = Rows(count, pool.key_dim(), base);
  pool.AppendLatent(id, count, rows.data(), nullptr);
}

TEST(PagedKVPool, ReserveIsAllOrNothing) {
  PagedKVPool pool = PagedKVPool::ForLatent(4, 16, 8, 4, DType::kF32);
  const Id a = pool.Add();
  const Id b = pool.Add();
  Append(pool, a, 20, 0.0f);  // 2 pages
  EXPECT_EQ(pool.free_pages(), 2);
  EXPECT_EQ(pool.pages_of(a), 2);
  const std::vector<Id> ids = {a, b};
  const std::vector<int64_t> too_many = {13, 17};  // a needs 1 more page, b 2: 3 > 2 free
  ExpectError([&] { pool.Reserve(ids, too_many); }, ErrorKind::kCapacity,
              {"page pool exhausted", "needs 3 more pages", "2 of 4 free"});
  EXPECT_EQ(pool.free_pages(), 2);
  EXPECT_EQ(pool.pages_of(a), 2);
  EXPECT_EQ(pool.pages_of(b), 0);
  EXPECT_EQ(pool.length(a), 20);
  const std::vector<int64_t> fits = {12, 16};  // a fits in its last page, b takes 1 page
  pool.Reserve(ids, fits);
  EXPECT_EQ(pool.free_pages(), 1);
}

TEST(PagedKVPool, ForkSharesFullPagesAndCopiesThePartialOne) {
  PagedKVPool pool = PagedKVPool::ForLatent(8, 16, 8, 4, DType::kF32);
  const Id parent = pool.Add();
  Append(pool, parent, 40, 0.0f);  // pages: full, full, partial (8 of 16)
  EXPECT_EQ(pool.free_pages(), 5);
  const Id child = pool.Fork(parent);
  EXPECT_EQ(pool.free_pages(), 4);  // only the partial page was copied
  EXPECT_EQ(pool.length(child), 40);
  const std::vector<float> before = Read(pool, parent);
  EXPECT_EQ(Read(pool, child), before);
  // Each continues on its own: the other's tokens never change.
  Append(pool, parent, 30, 1000.0f);
  Append(pool, child, 5, -1000.0f);
  std::vector<float> parent_rows = Read(pool, parent);
  std::vector<float> child_rows = Read(pool, child);
  EXPECT_TRUE(std::equal(before.begin(), before.end(), parent_rows.begin()));
  EXPECT_TRUE(std::equal(before.begin(), before.end(), child_rows.begin()));
  EXPECT_EQ(parent_rows[40 * 12], 1000.0f);
  EXPECT_EQ(child_rows[40 * 12], -1000.0f);
  // Freeing the parent keeps the shared pages for the child; freeing the child returns them.
  pool.Free(parent);
  EXPECT_EQ(Read(pool, child), child_rows);
  pool.Free(child);
  EXPECT_EQ(pool.free_pages(), 8);
}

TEST(PagedKVPool, ForkAtAPageBoundaryCopiesNothing) {
  PagedKVPool pool = PagedKVPool::ForLatent(4, 16, 8, 4, DType::kBF16);
  const Id parent = pool.Add();
  Append(pool, parent, 32, 0.0f);
  const Id child = pool.Fork(parent);
  EXPECT_EQ(pool.free_pages(), 2);
  Append(pool, child, 1, 5.0f);  // the child's next page is its own
  EXPECT_EQ(pool.free_pages(), 1);
  EXPECT_EQ(pool.length(parent), 32);
}

TEST(PagedKVPool, FreedAndUnknownSequencesAreErrors) {
  PagedKVPool pool = PagedKVPool::ForHeads(4, 16, 2, 8, 8, DType::kF16);
  const Id a = pool.Add();
  pool.Free(a);
  EXPECT_FALSE(pool.Contains(a));
  ExpectError([&] { pool.length(a); }, ErrorKind::kInvalidArgument, {"sequence 0 was freed"});
  ExpectError([&] { pool.Fork(a); }, ErrorKind::kInvalidArgument, {"fork", "freed"});
  ExpectError([&] { pool.Free(a); }, ErrorKind::kInvalidArgument, {"freed"});
  ExpectError([&] { pool.View(7); }, ErrorKind::kInvalidArgument, {"unknown sequence 7"});
  const Id b = pool.Add();
  EXPECT_NE(a, b);  // ids are never reused
  const std::vector<Id> twice = {b, b};
  const std::vector<int64_t> counts = {1, 1};
  ExpectError([&] { pool.Reserve(twice, counts); }, ErrorKind::kInvalidArgument, {"appears twice"});
  const std::vector<float> rows(16 * 8);
  ExpectError([&] { pool.AppendHeads(b, 1, rows.data(), rows.data(), nullptr); },
              ErrorKind::kCapacity, {"no room reserved"});
  ExpectError([&] { pool.AppendLatent(b, 1, rows.data(), nullptr); }, ErrorKind::kInvalidArgument,
              {"per-head"});
}

TEST(PagedKVPool, BadShapesAreRefused) {
  ExpectError([] { PagedKVPool::ForHeads(4, 24, 2, 8, 8, DType::kF32); },
              ErrorKind::kInvalidArgument, {"page size", "multiple of 16"});
  ExpectError([] { PagedKVPool::ForHeads(4, 512, 2, 8, 8, DType::kF32); },
              ErrorKind::kInvalidArgument, {"page size"});
  ExpectError([] { PagedKVPool::ForHeads(0, 16, 2, 8, 8, DType::kF32); },
              ErrorKind::kInvalidArgument, {"page count"});
  ExpectError([] { PagedKVPool::ForHeads(4, 16, 2, 8, 8, DType::kU8); },
              ErrorKind::kInvalidArgument, {"dtype"});
}

// Three sequences through a schedule of ragged calls (prefill chunks, idle sequences, decode
// tokens), once over a contiguous cache and once over a page pool: the outputs agree.
void CheckPagedEqualsContiguous(const ModelConfig& config, MlaForm form, DType dtype,
                                int64_t page_size) {
  SCOPED_TRACE(std::string(MlaFormName(form)) + " " + DTypeName(dtype) + " page " +
               std::to_string(page_size));
  const auto layer = BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 7));
  auto cache = layer->NewCache(3, 80, dtype, form);
  auto pool = layer->NewPagedPool(40, page_size, dtype, form);
  // Sequences 1 and 2 of the pool; sequence 0 is added and freed first, so the pool's page
  // order differs from allocation order.
  const Id scratch = pool->Add();
  const std::vector<Id> warm = {scratch};
  const std::vector<int64_t> warm_count = {40};
  pool->Reserve(warm, warm_count);
  const std::vector<Id> ids = {pool->Add(), pool->Add(), pool->Add()};
  pool->Free(scratch);
  const std::vector<std::vector<int64_t>> schedule = {{17, 5, 0}, {1, 30, 9},  {0, 1, 1},
                                                      {1, 1, 1},  {12, 0, 20}, {1, 1, 1}};
  uint64_t seed = 11;
  for (const std::vector<int64_t>& counts : schedule) {
    const Tensor x = RandomUniform({3, 30, config.hidden_size}, seed++, 1.0f);
    std::vector<uint8_t> keep(90, 1);
    keep[3] = 0;  // a padding token in sequence 0's chunk
    const TokenBatch batch{&x, {}, keep, counts};
    Tensor contiguous, paged;
    layer->StepInto(batch, *cache, form, contiguous);
    layer->StepPagedInto(batch, *pool, ids, form, paged);
    EXPECT_LT(RelativeError(paged, contiguous), dtype == DType::kBF16 ? 1e-2 : 1e-5);
  }
  for (int64_t b = 0; b < 3; ++b) {
    EXPECT_EQ(pool->length(ids[static_cast<size_t>(b)]), cache->length(b));
  }
}

TEST(PagedLayers, GqaPagedEqualsContiguous) {
  for (const DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (const int64_t page_size : {16, 32, 64}) {
      CheckPagedEqualsContiguous(testing::SmallGqaConfig(8, 2), MlaForm::kAuto, dtype, page_size);
    }
  }
}

TEST(PagedLayers, MlaPagedEqualsContiguousInEveryForm) {
  ModelConfig config = testing::SmallMlaConfig(48);
  config.mla.v_head_dim = 32;
  for (const MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed, MlaForm::kAuto}) {
    for (const DType dtype : {DType::kF32, DType::kBF16}) {
      CheckPagedEqualsContiguous(config, form, dtype, 16);
    }
  }
}

// A forked sequence continues from the fork point exactly as one that had been given the same
// tokens, and the parent's continuation is unaffected.
TEST(PagedLayers, ForkContinuesLikeAFreshSequence) {
  const ModelConfig config = testing::SmallGqaConfig(4, 2);
  const auto layer = BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 3));
  auto pool = layer->NewPagedPool(16, 16, DType::kF32, MlaForm::kAuto);
  const Tensor prompt = RandomUniform({1, 21, config.hidden_size}, 1, 1.0f);
  const Tensor next = RandomUniform({1, 3, config.hidden_size}, 2, 1.0f);
  const Tensor other = RandomUniform({1, 2, config.hidden_size}, 4, 1.0f);
  const Id parent = pool->Add();
  const std::vector<Id> parent_ids = {parent};
  Tensor out;
  layer->StepPagedInto({&prompt, {}, {}}, *pool, parent_ids, MlaForm::kAuto, out);
  const Id child = pool->Fork(parent);
  const std::vector<Id> child_ids = {child};
  layer->StepPagedInto({&other, {}, {}}, *pool, parent_ids, MlaForm::kAuto, out);
  Tensor forked;
  layer->StepPagedInto({&next, {}, {}}, *pool, child_ids, MlaForm::kAuto, forked);

  auto cache = layer->NewCache(1, 32, DType::kF32, MlaForm::kAuto);
  layer->Step({&prompt, {}, {}}, *cache, MlaForm::kAuto);
  const Tensor fresh = layer->Step({&next, {}, {}}, *cache, MlaForm::kAuto);
  EXPECT_LT(RelativeError(forked, fresh), 1e-6);
}

// One packed call — a 40-token prefill chunk and single decode tokens of other sequences, each
// at its own position — equals running the sequences one at a time, for both cache kinds.
void CheckPackedEqualsOneByOne(const ModelConfig& config, MlaForm form) {
  SCOPED_TRACE(MlaFormName(form));
  const auto layer = BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 5));
  auto packed_pool = layer->NewPagedPool(64, 16, DType::kF32, form);
  auto single_pool = layer->NewPagedPool(64, 16, DType::kF32, form);
  std::vector<Id> packed_ids, single_ids;
  const std::vector<int64_t> history = {0, 9, 33, 17};  // tokens each sequence already holds
  for (size_t i = 0; i < history.size(); ++i) {
    packed_ids.push_back(packed_pool->Add());
    single_ids.push_back(single_pool->Add());
    if (history[i] == 0) continue;
    const Tensor past = RandomUniform({1, history[i], config.hidden_size}, 20 + i, 1.0f);
    const std::vector<Id> a = {packed_ids.back()}, b = {single_ids.back()};
    Tensor ignored;
    layer->StepPagedInto({&past, {}, {}}, *packed_pool, a, form, ignored);
    layer->StepPagedInto({&past, {}, {}}, *single_pool, b, form, ignored);
  }
  const std::vector<int64_t> counts = {40, 1, 1, 0};
  const Tensor x = RandomUniform({42, config.hidden_size}, 3, 1.0f);
  Tensor packed;
  layer->StepPagedInto({&x, {}, {}, counts}, *packed_pool, packed_ids, form, packed);
  ASSERT_EQ(packed.shape(), (Shape{42, config.hidden_size}));
  int64_t row = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) continue;
    Tensor one({1, counts[i], config.hidden_size});
    std::copy_n(x.data() + row * config.hidden_size, counts[i] * config.hidden_size, one.data());
    const std::vector<Id> id = {single_ids[i]};
    Tensor single;
    layer->StepPagedInto({&one, {}, {}}, *single_pool, id, form, single);
    EXPECT_LT(RelativeError(packed.data() + row * config.hidden_size, single.data(),
                            counts[i] * config.hidden_size),
              1e-5)
        << "sequence " << i;
    row += counts[i];
  }
  for (size_t i = 0; i < counts.size(); ++i) {
    EXPECT_EQ(packed_pool->length(packed_ids[i]), history[i] + counts[i]);
  }
}

TEST(PagedLayers, PackedCallEqualsSequencesOneByOne) {
  CheckPackedEqualsOneByOne(testing::SmallGqaConfig(8, 2), MlaForm::kAuto);
  ModelConfig mla = testing::SmallMlaConfig(48);
  mla.mla.v_head_dim = 32;
  for (const MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed, MlaForm::kAuto}) {
    CheckPackedEqualsOneByOne(mla, form);
  }
}

TEST(PagedLayers, PackedCountsMustCoverTheRows) {
  const ModelConfig config = testing::SmallGqaConfig(4, 2);
  const auto layer = BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 3));
  auto pool = layer->NewPagedPool(8, 16, DType::kF32, MlaForm::kAuto);
  const std::vector<Id> ids = {pool->Add(), pool->Add()};
  const Tensor x = RandomUniform({5, config.hidden_size}, 1, 1.0f);
  Tensor out;
  const std::vector<int64_t> short_counts = {2, 2};
  ExpectError(
      [&] {
        layer->StepPagedInto({&x, {}, {}, short_counts}, *pool, ids, MlaForm::kAuto, out);
      },
      ErrorKind::kInvalidArgument, {"lengths sum to 4", "5 rows"});
  ExpectError(
      [&] {
        layer->StepPagedInto({&x, {}, {}}, *pool, ids, MlaForm::kAuto, out);
      },
      ErrorKind::kInvalidArgument, {"need lengths"});
  const std::vector<int64_t> counts = {3, 2};
  const std::vector<Id> duplicate = {ids[0], ids[0]};
  ExpectError(
      [&] {
        layer->StepPagedInto({&x, {}, {}, counts}, *pool, duplicate, MlaForm::kAuto, out);
      },
      ErrorKind::kInvalidArgument, {"appears twice"});
  EXPECT_EQ(pool->length(ids[0]), 0);
}

TEST(PagedLayers, ExhaustedPoolLeavesEverySequenceUnchanged) {
  const ModelConfig config = testing::SmallGqaConfig(4, 2);
  const auto layer = BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 3));
  auto pool = layer->NewPagedPool(3, 16, DType::kF32, MlaForm::kAuto);
  const std::vector<Id> ids = {pool->Add(), pool->Add()};
  const Tensor x = RandomUniform({2, 30, config.hidden_size}, 1, 1.0f);
  const std::vector<int64_t> counts = {30, 20};  // 2 + 2 pages of 3
  Tensor out;
  ExpectError(
      [&] {
        layer->StepPagedInto({&x, {}, {}, counts}, *pool, ids, MlaForm::kAuto, out);
      },
      ErrorKind::kCapacity, {"page pool exhausted", "needs 4 more pages"});
  EXPECT_EQ(pool->length(ids[0]), 0);
  EXPECT_EQ(pool->length(ids[1]), 0);
  EXPECT_EQ(pool->free_pages(), 3);
  // A layer of another kind, or a pool of the wrong form, is refused before anything changes.
  auto latent = BuildAttentionLayer(testing::SmallMlaConfig(48), 0,
                                    RandomAttentionWeights(testing::SmallMlaConfig(48), 1));
  const Tensor y = RandomUniform({2, 1, testing::SmallMlaConfig(48).hidden_size}, 1, 1.0f);
  ExpectError(
      [&] {
        latent->StepPagedInto({&y, {}, {}}, *pool, ids, MlaForm::kAbsorbed, out);
      },
      ErrorKind::kInvalidArgument, {"latent cache"});
}

}  // namespace
}  // namespace attn
