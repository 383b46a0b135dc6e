// SPDX-License-Identifier: Apache-2.0
// After warm-up, a decode step (StepInto with a reused output) allocates nothing: every
// operator new during the measured steps, on any thread, is counted. Not built into sanitizer
// runs, whose allocator must stay in charge of operator new.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "attn/layer_weights.h"
#include "test_util.h"

#if !defined(__SANITIZE_ADDRESS__)

namespace {
std::atomic<bool> counting{false};
std::atomic<int64_t> allocations{0};
}  // namespace

void* operator new(std::size_t size) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace attn {
namespace {

// Decodes `steps` tokens after a warm-up prefill and step; returns operator new calls made
// during the counted steps.
int64_t AllocationsPerDecode(const ModelConfig& config, MlaForm form, DType dtype, int steps) {
  const auto layer = BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 1));
  auto cache = layer->NewCache(2, 64, dtype, form);
  const Tensor prompt = RandomUniform({2, 8, config.hidden_size}, 2, 1.0f);
  const Tensor token = RandomUniform({2, 1, config.hidden_size}, 3, 1.0f);
  Tensor out;
  layer->StepInto({&prompt, {}, {}}, *cache, form, out);
  layer->StepInto({&token, {}, {}}, *cache, form, out);  // warm-up: buffers reach decode size
  allocations = 0;
  counting = true;
  for (int i = 0; i < steps; ++i) layer->StepInto({&token, {}, {}}, *cache, form, out);
  counting = false;
  return allocations.load();
}

TEST(DecodeAllocation, GqaDecodeAllocatesNothingAfterWarmUp) {
  EXPECT_EQ(AllocationsPerDecode(testing::SmallGqaConfig(8, 2), MlaForm::kAuto, DType::kBF16, 5),
            0);
  EXPECT_EQ(AllocationsPerDecode(testing::SmallGqaConfig(4, 4), MlaForm::kAuto, DType::kF32, 5), 0);
}

// Widths the fast kernel covers (multiples of 16; the reference fallback for odd widths keeps
// its plain per-call buffers).
TEST(DecodeAllocation, MlaDecodeAllocatesNothingAfterWarmUp) {
  ModelConfig config = testing::SmallMlaConfig(48);
  config.mla.v_head_dim = 32;
  for (MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed, MlaForm::kAuto}) {
    EXPECT_EQ(AllocationsPerDecode(config, form, DType::kBF16, 5), 0) << MlaFormName(form);
  }
}

// The same over a page pool, crossing page boundaries (page 16, 40 steps from 8 tokens).
int64_t AllocationsPerPagedDecode(const ModelConfig& config, MlaForm form, int steps) {
  const auto layer = BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 1));
  auto pool = layer->NewPagedPool(64, 16, DType::kBF16, form);
  const std::vector<PagedKVPool::SequenceId> ids = {pool->Add(), pool->Add()};
  const Tensor prompt = RandomUniform({2, 8, config.hidden_size}, 2, 1.0f);
  const Tensor token = RandomUniform({2, 1, config.hidden_size}, 3, 1.0f);
  Tensor out;
  layer->StepPagedInto({&prompt, {}, {}}, *pool, ids, form, out);
  layer->StepPagedInto({&token, {}, {}}, *pool, ids, form, out);
  allocations = 0;
  counting = true;
  for (int i = 0; i < steps; ++i) layer->StepPagedInto({&token, {}, {}}, *pool, ids, form, out);
  counting = false;
  return allocations.load();
}

TEST(DecodeAllocation, PagedDecodeAllocatesNothingAfterWarmUp) {
  EXPECT_EQ(AllocationsPerPagedDecode(testing::SmallGqaConfig(8, 2), MlaForm::kAuto, 40), 0);
  ModelConfig mla = testing::SmallMlaConfig(48);
  mla.mla.v_head_dim = 32;
  for (MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed}) {
    EXPECT_EQ(AllocationsPerPagedDecode(mla, form, 40), 0) << MlaFormName(form);
  }
}

// The counter itself works: a fresh output tensor per step does allocate.
TEST(DecodeAllocation, CounterSeesAllocations) {
  const ModelConfig config = testing::SmallGqaConfig(8, 2);
  const auto layer = BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 1));
  auto cache = layer->NewCache(1, 8, DType::kF32, MlaForm::kAuto);
  const Tensor token = RandomUniform({1, 1, config.hidden_size}, 3, 1.0f);
  layer->Step({&token, {}, {}}, *cache, MlaForm::kAuto);
  allocations = 0;
  counting = true;
  const Tensor y = layer->Step({&token, {}, {}}, *cache, MlaForm::kAuto);
  counting = false;
  EXPECT_GT(allocations.load(), 0);
}

}  // namespace
}  // namespace attn

#endif  // !defined(__SANITIZE_ADDRESS__)
