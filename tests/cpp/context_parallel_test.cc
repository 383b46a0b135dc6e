// SPDX-License-Identifier: Apache-2.0
// Context-parallel attention (include/attn/context_parallel.h) on groups of 1 to 4 ranks, one
// thread each (InProcessGroup): every rank's output equals the single-process layer's to fp32
// rounding for MHA, GQA, MQA, sliding windows, sinks, soft-capping, ALiBi, chunked attention and
// MLA (absorbed, naive, auto; with and without q_lora), through prefill then decode (ranks holding
// unequal counts), chunked prefill, ragged batches and left padding, prompts shorter than the
// group, and decode past the 256-token runs; the cache deal; a rank whose local cache is full
// makes every rank throw Error(kCapacity) with every cache unchanged.
#include "attn/context_parallel.h"

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attn/communicator.h"
#include "attn/error.h"
#include "attn/layer_weights.h"
#include "rank_threads.h"
#include "test_util.h"

namespace attn {
namespace {

using testing::RelativeError;

// Runs body(rank, communicator) on `world` threads of one InProcessGroup and rethrows the first
// exception any rank threw.
void OnRanks(int world, const std::function<void(int, std::shared_ptr<Communicator>)>& body) {
  testing::RethrowFirst(testing::RunOnRanks(
      world, [&body](std::shared_ptr<Communicator> comm) { body(comm->rank(), comm); }));
}

std::unique_ptr<AttentionLayer> MakeLayer(const ModelConfig& c, int64_t layer = 0) {
  return BuildAttentionLayer(c, layer, RandomAttentionWeights(c, 7));
}

// One call of a scenario: hidden states [B, S, D] and the batch's optional fields.
struct Call {
  Tensor x;
  std::vector<int64_t> positions;
  std::vector<uint8_t> keep;
  std::vector<int64_t> lengths;
};

// Runs the calls in order on a fresh cache of `layer` and returns every output, concatenated.
std::vector<float> RunCalls(const AttentionLayer& layer, const std::vector<Call>& calls,
                            int64_t capacity, MlaForm form, DType dtype) {
  const Call& first = calls.front();
  const int64_t batch =
      first.lengths.empty() ? first.x.dim(0) : static_cast<int64_t>(first.lengths.size());
  std::unique_ptr<Cache> cache = layer.NewCache(batch, capacity, dtype, form);
  std::vector<float> outputs;
  Tensor out;
  for (const Call& call : calls) {
    layer.StepInto({&call.x, call.positions, call.keep, call.lengths}, *cache, form, out);
    outputs.insert(outputs.end(), out.data(), out.data() + out.size());
  }
  return outputs;
}

// A scenario's calls on a batch of two sequences of width `hidden`:
//   "prefill-decode": a prefill of `prefill` tokens (sequence 1 left-padded by two), then one
//                     decode call per remaining token of 12;
//   "chunked-ragged": ragged chunks (6 | 2, then 3 | 5 tokens), then decode steps, one with
//                     sequence 0 idle;
//   "packed":         [N, D] calls with per-sequence counts (cu_seqlens style).
std::vector<Call> Scenario(const std::string& name, int64_t hidden, int64_t prefill = 5) {
  std::vector<Call> calls;
  if (name == "prefill-decode") {
    constexpr int64_t kTokens = 12;
    const Tensor all = RandomUniform({2, kTokens, hidden}, 31, 1.0f);
    auto slice = [&](int64_t begin, int64_t end) {
      Call call;
      call.x = Tensor({2, end - begin, hidden});
      for (int64_t b = 0; b < 2; ++b) {
        for (int64_t s = begin; s < end; ++s) {
          std::copy_n(all.data() + (b * kTokens + s) * hidden, hidden,
                      call.x.data() + (b * (end - begin) + s - begin) * hidden);
          call.positions.push_back(b == 0 ? s : std::max<int64_t>(0, s - 2));
          call.keep.push_back(b == 1 && s < 2 ? 0 : 1);
        }
      }
      // Positions and keep are [B·S] in batch order: sequence 0's rows first.
      return call;
    };
    calls.push_back(slice(0, prefill));
    for (int64_t s = prefill; s < kTokens; ++s) calls.push_back(slice(s, s + 1));
    return calls;
  }
  if (name == "packed") {
    // [N, D] rows with per-sequence counts: a prefill chunk of one sequence beside another's.
    const std::vector<std::vector<int64_t>> counts = {{5, 3}, {1, 4}, {1, 1}, {2, 1}};
    for (size_t i = 0; i < counts.size(); ++i) {
      Call call;
      call.x = RandomUniform({counts[i][0] + counts[i][1], hidden}, 50 + i, 1.0f);
      call.lengths = counts[i];
      calls.push_back(std::move(call));
    }
    return calls;
  }
  // chunked-ragged
  const int64_t widths[] = {6, 5, 1, 1, 1};
  const std::vector<std::vector<int64_t>> lengths = {{6, 2}, {3, 5}, {1, 1}, {0, 1}, {1, 1}};
  for (size_t i = 0; i < lengths.size(); ++i) {
    Call call;
    call.x = RandomUniform({2, widths[i], hidden}, 40 + i, 1.0f);
    call.lengths = lengths[i];
    calls.push_back(std::move(call));
  }
  return calls;
}

// Every rank's outputs of the scenario through a group of `world` equal the single-process
// layer's; also checks the cache deal on every rank (local entries add up, runs are ordered).
void ExpectSameAsOneProcess(const ModelConfig& c, int64_t layer_index, int world,
                            const std::vector<Call>& calls, MlaForm form, const std::string& what,
                            DType dtype = DType::kF32, double tolerance = 1e-5,
                            ContextParallelOptions options = {}) {
  constexpr int64_t kCapacity = 40;
  const std::vector<float> expected =
      RunCalls(*MakeLayer(c, layer_index), calls, kCapacity, form, dtype);
  OnRanks(world, [&](int rank, std::shared_ptr<Communicator> comm) {
    const auto layer = MakeContextParallelLayer(MakeLayer(c, layer_index), comm, options);
    const std::vector<float> got = RunCalls(*layer, calls, kCapacity, form, dtype);
    ASSERT_EQ(got.size(), expected.size());
    EXPECT_LT(RelativeError(got.data(), expected.data(), static_cast<int64_t>(got.size())),
              tolerance)
        << what << ", world " << world << ", rank " << rank;
  });
}

std::vector<std::pair<std::string, ModelConfig>> GqaVariants() {
  std::vector<std::pair<std::string, ModelConfig>> variants;
  variants.emplace_back("mha", testing::SmallGqaConfig(4, 4));
  variants.emplace_back("gqa", testing::SmallGqaConfig(4, 2));
  variants.emplace_back("mqa", testing::SmallGqaConfig(4, 1));
  ModelConfig window = testing::SmallGqaConfig(4, 2);
  window.sliding_window = 3;
  variants.emplace_back("window", window);
  ModelConfig sinks = testing::SmallGqaConfig(4, 2);
  sinks.gqa.attention_sinks = true;
  variants.emplace_back("sinks", sinks);
  ModelConfig softcap = testing::SmallGqaConfig(4, 2);
  softcap.attn_logit_softcapping = 0.8;
  variants.emplace_back("softcap", softcap);
  ModelConfig alibi = testing::SmallGqaConfig(4, 4);
  alibi.model_type = "falcon";
  alibi.gqa.alibi = true;
  variants.emplace_back("alibi", alibi);
  return variants;
}

TEST(ContextParallel, GqaFamilyMatchesOneProcess) {
  for (const auto& [name, config] : GqaVariants()) {
    for (int world : {1, 2, 3, 4}) {
      // Prefill of 5 (more tokens than ranks), of 2 (fewer: all on one rank), then decode.
      for (int64_t prefill : {5, 2}) {
        ExpectSameAsOneProcess(config, 0, world, Scenario("prefill-decode", 64, prefill),
                               MlaForm::kAuto, name + " prefill " + std::to_string(prefill));
      }
      ExpectSameAsOneProcess(config, 0, world, Scenario("chunked-ragged", 64), MlaForm::kAuto,
                             name + " chunked-ragged");
      ExpectSameAsOneProcess(config, 0, world, Scenario("packed", 64), MlaForm::kAuto,
                             name + " packed");
    }
  }
}

// bf16 and f16 caches: the same stored values on every rank and in one process, so only the
// kernels' arithmetic differs (a rank's slice may take the bf16 dot products where one process
// scores the same keys in fp32, or the other way round: bf16 rounding of Q, ~1e-2).
TEST(ContextParallel, HalfPrecisionCachesMatchOneProcess) {
  const ModelConfig gqa = testing::SmallGqaConfig(8, 2);
  const ModelConfig mla = testing::SmallMlaConfig(24);
  for (int world : {2, 3}) {
    ExpectSameAsOneProcess(gqa, 0, world, Scenario("chunked-ragged", 64), MlaForm::kAuto, "gqa f16",
                           DType::kF16);
    ExpectSameAsOneProcess(gqa, 0, world, Scenario("prefill-decode", 64, 9), MlaForm::kAuto,
                           "gqa bf16", DType::kBF16, 3e-2);
    ExpectSameAsOneProcess(mla, 0, world, Scenario("prefill-decode", 96, 9), MlaForm::kAbsorbed,
                           "mla bf16", DType::kBF16, 3e-2);
  }
}

// Llama 4: chunked layers (blocks counted from the first kept token), L2 norms, and a NoPE layer
// with temperature tuning, whose factor follows the global slot.
TEST(ContextParallel, Llama4ChunkedAndNopeLayersMatchOneProcess) {
  ModelConfig c = testing::SmallGqaConfig(4, 2);
  c.model_type = "llama4_text";
  c.num_layers = 4;
  c.rope.pairing = RopePairing::kInterleaved;
  c.gqa.qk_norm = QkNorm::kL2;
  c.gqa.qk_norm_eps = 1e-5;
  c.attention_chunk_size = 4;
  c.chunked_layers = {true, true, true, false};
  c.nope_layers = {false, false, false, true};
  c.temperature = {3.0, 0.5};
  for (int64_t layer : {0, 3}) {
    for (int world : {2, 3}) {
      ExpectSameAsOneProcess(c, layer, world, Scenario("prefill-decode", 64, 7), MlaForm::kAuto,
                             "llama4 layer " + std::to_string(layer));
      ExpectSameAsOneProcess(c, layer, world, Scenario("chunked-ragged", 64), MlaForm::kAuto,
                             "llama4 chunked-ragged layer " + std::to_string(layer));
    }
  }
}

TEST(ContextParallel, MlaMatchesOneProcess) {
  for (int64_t q_lora : {0, 24}) {
    const ModelConfig c = testing::SmallMlaConfig(q_lora);
    for (MlaForm form : {MlaForm::kAbsorbed, MlaForm::kNaive, MlaForm::kAuto}) {
      for (int world : {1, 2, 3, 4}) {
        const std::string what =
            std::string(MlaFormName(form)) + " q_lora " + std::to_string(q_lora);
        ExpectSameAsOneProcess(c, 0, world, Scenario("prefill-decode", 96, 5), form,
                               what + " prefill-decode");
        ExpectSameAsOneProcess(c, 0, world, Scenario("chunked-ragged", 96), form,
                               what + " chunked-ragged");
      }
    }
  }
}

// A merge larger than ContextParallelOptions::merge_floats is cut into blocks of query tokens
// (one or two tokens here), each merged on its own: the same output, every call shape included.
TEST(ContextParallel, BlockedMergesMatchOneProcess) {
  ContextParallelOptions small;
  small.merge_floats = 37;  // GQA 4 heads of 16 (+1): 68 floats a token, so one token a block
  ModelConfig sinks = testing::SmallGqaConfig(4, 2);
  sinks.gqa.attention_sinks = true;
  const ModelConfig mla = testing::SmallMlaConfig(24);
  for (int world : {2, 3}) {
    for (const char* scenario : {"chunked-ragged", "packed"}) {
      ExpectSameAsOneProcess(sinks, 0, world, Scenario(scenario, 64), MlaForm::kAuto,
                             std::string("blocked gqa ") + scenario, DType::kF32, 1e-5, small);
    }
    ExpectSameAsOneProcess(mla, 0, world, Scenario("prefill-decode", 96, 9), MlaForm::kAbsorbed,
                           "blocked mla", DType::kF32, 1e-5, small);
  }
  testing::ExpectError(
      [&] {
        ContextParallelOptions zero;
        zero.merge_floats = 0;
        MakeContextParallelLayer(MakeLayer(sinks, 0), SingleProcessCommunicator(), zero);
      },
      ErrorKind::kInvalidArgument, {"merge_floats"});
}

// Decode past kContextParallelRun tokens: the sequence's runs move between ranks, windows and
// ALiBi span several runs, and the output still equals one process's.
TEST(ContextParallel, LongDecodeAcrossRuns) {
  ModelConfig window = testing::SmallGqaConfig(4, 1);
  window.sliding_window = 300;
  ModelConfig alibi = testing::SmallGqaConfig(4, 4);
  alibi.model_type = "falcon";
  alibi.gqa.alibi = true;
  constexpr int64_t kTokens = 600;
  const Tensor x = RandomUniform({1, kTokens, 64}, 5, 1.0f);
  for (const ModelConfig* c : {&window, &alibi}) {
    const auto plain = MakeLayer(*c);
    const Tensor expected = plain->PrefillThenDecode({&x, {}, {}}, 7, MlaForm::kAuto, DType::kF32);
    OnRanks(3, [&](int rank, std::shared_ptr<Communicator> comm) {
      const auto layer = MakeContextParallelLayer(MakeLayer(*c), comm);
      const Tensor got = layer->PrefillThenDecode({&x, {}, {}}, 7, MlaForm::kAuto, DType::kF32);
      EXPECT_LT(RelativeError(got, expected), 1e-5) << c->model_type << " rank " << rank;
    });
  }
}

// The deal of include/attn/context_parallel.h, seen from every rank: a prefill of n >= world
// tokens in equal contiguous parts, then decode tokens extending the last run up to 256 tokens,
// then the rank holding the fewest; local entries add up to the sequence and match the runs.
TEST(ContextParallel, CacheDealFollowsTheRule) {
  const ModelConfig c = testing::SmallGqaConfig(4, 1);
  const Tensor prompt = RandomUniform({1, 10, 64}, 8, 1.0f);
  const Tensor token = RandomUniform({1, 1, 64}, 9, 1.0f);
  OnRanks(3, [&](int rank, std::shared_ptr<Communicator> comm) {
    const auto layer = MakeContextParallelLayer(MakeLayer(c), comm);
    std::unique_ptr<Cache> cache = layer->NewCache(1, 600, DType::kF32, MlaForm::kAuto);
    auto& shard = dynamic_cast<ContextShardCache&>(*cache);
    Tensor out;
    layer->StepInto({&prompt, {}, {}}, *cache, MlaForm::kAuto, out);
    // 10 tokens over 3 ranks: 4, 3, 3 at global slots [0, 4), [4, 7), [7, 10).
    EXPECT_EQ(shard.held(0, 0), 4);
    EXPECT_EQ(shard.held(0, 1), 3);
    EXPECT_EQ(shard.held(0, 2), 3);
    const int64_t begins[] = {0, 4, 7};
    ASSERT_EQ(shard.runs(0).size(), 1u);
    EXPECT_EQ(shard.runs(0)[0].global_begin, begins[rank]);
    EXPECT_EQ(shard.runs(0)[0].local_begin, 0);
    // Decode: rank 2's run grows to 256 tokens (253 steps), then rank 1 (fewest: 3, before
    // rank 0's 4) starts a run of the next 256, after which rank 0 (4 against 256 and 259)
    // takes the next.
    for (int step = 0; step < 253 + 256 + 1; ++step) {
      layer->StepInto({&token, {}, {}}, *cache, MlaForm::kAuto, out);
    }
    EXPECT_EQ(shard.held(0, 0), 5);
    EXPECT_EQ(shard.held(0, 1), 259);
    EXPECT_EQ(shard.held(0, 2), 256);
    EXPECT_EQ(cache->length(0), 520);
    EXPECT_EQ(shard.local().length(0), shard.held(0, rank));
    int64_t local = 0;
    for (const ContextShardCache::Run& run : shard.runs(0)) {
      EXPECT_EQ(run.local_begin, local);
      local += run.count;
    }
    EXPECT_EQ(local, shard.local().length(0));
    if (rank == 0) {
      ASSERT_EQ(shard.runs(0).size(), 2u);
      EXPECT_EQ(shard.runs(0)[1].global_begin, 519);
    }
    if (rank == 1) {
      ASSERT_EQ(shard.runs(0).size(), 2u);
      EXPECT_EQ(shard.runs(0)[1].global_begin, 263);
      EXPECT_EQ(shard.runs(0)[1].count, 256);
    }
  });
}

// One rank's local cache is full: every rank throws Error(kCapacity) naming that rank, before
// anything is written, and the next fitting step still matches one process.
TEST(ContextParallel, CapacityOnOneRankFailsEveryRank) {
  const ModelConfig c = testing::SmallGqaConfig(4, 2);
  const Tensor prompt = RandomUniform({1, 4, 64}, 10, 1.0f);
  const Tensor token = RandomUniform({1, 1, 64}, 11, 1.0f);
  const Tensor two = RandomUniform({1, 2, 64}, 12, 1.0f);
  // One process: the prompt, one token, then the two-token call.
  const auto plain = MakeLayer(c);
  std::unique_ptr<Cache> plain_cache = plain->NewCache(1, 16, DType::kF32, MlaForm::kAuto);
  plain->Step({&prompt, {}, {}}, *plain_cache, MlaForm::kAuto);
  plain->Step({&token, {}, {}}, *plain_cache, MlaForm::kAuto);
  const Tensor expected = plain->Step({&two, {}, {}}, *plain_cache, MlaForm::kAuto);
  OnRanks(2, [&](int rank, std::shared_ptr<Communicator> comm) {
    // Rank 1 holds at most 3 tokens: its 2 of the prompt and the first decode token.
    ContextParallelOptions options;
    options.local_capacity = rank == 1 ? 3 : 0;
    const auto layer = MakeContextParallelLayer(MakeLayer(c), comm, options);
    std::unique_ptr<Cache> cache = layer->NewCache(1, 16, DType::kF32, MlaForm::kAuto);
    const auto& shard = dynamic_cast<const ContextShardCache&>(*cache);
    layer->Step({&prompt, {}, {}}, *cache, MlaForm::kAuto);
    layer->Step({&token, {}, {}}, *cache, MlaForm::kAuto);
    EXPECT_EQ(shard.held(0, 1), 3);
    testing::ExpectError(
        [&] {
          layer->Step({&token, {}, {}}, *cache, MlaForm::kAuto);
        },
        ErrorKind::kCapacity, {"rank 1"});
    EXPECT_EQ(cache->length(0), 5);
    EXPECT_EQ(shard.local().length(0), rank == 0 ? 2 : 3);
    EXPECT_EQ(shard.held(0, 0), 2);
    EXPECT_EQ(shard.held(0, 1), 3);
    // Two tokens (n >= world) split 1 | 1: still too many for rank 1.
    testing::ExpectError(
        [&] {
          layer->Step({&two, {}, {}}, *cache, MlaForm::kAuto);
        },
        ErrorKind::kCapacity, {"rank 1"});
    EXPECT_EQ(cache->length(0), 5);
  });
  // With room on rank 1 the same calls match one process (the failed ones never happened).
  OnRanks(2, [&](int rank, std::shared_ptr<Communicator> comm) {
    const auto layer = MakeContextParallelLayer(MakeLayer(c), comm);
    std::unique_ptr<Cache> cache = layer->NewCache(1, 16, DType::kF32, MlaForm::kAuto);
    layer->Step({&prompt, {}, {}}, *cache, MlaForm::kAuto);
    layer->Step({&token, {}, {}}, *cache, MlaForm::kAuto);
    const Tensor got = layer->Step({&two, {}, {}}, *cache, MlaForm::kAuto);
    EXPECT_LT(RelativeError(got, expected), 1e-5) << "rank " << rank;
  });
}

// After a refused step the caches of a group are unchanged: the same calls continued on them
// give one process's outputs.
TEST(ContextParallel, RefusedStepLeavesCachesUsable) {
  const ModelConfig c = testing::SmallGqaConfig(4, 2);
  const Tensor prompt = RandomUniform({1, 4, 64}, 13, 1.0f);
  const Tensor token = RandomUniform({1, 1, 64}, 14, 1.0f);
  const Tensor big = RandomUniform({1, 8, 64}, 15, 1.0f);
  const auto plain = MakeLayer(c);
  std::unique_ptr<Cache> plain_cache = plain->NewCache(1, 16, DType::kF32, MlaForm::kAuto);
  plain->Step({&prompt, {}, {}}, *plain_cache, MlaForm::kAuto);
  const Tensor expected = plain->Step({&token, {}, {}}, *plain_cache, MlaForm::kAuto);
  OnRanks(2, [&](int rank, std::shared_ptr<Communicator> comm) {
    ContextParallelOptions options;
    options.local_capacity = rank == 0 ? 4 : 16;
    const auto layer = MakeContextParallelLayer(MakeLayer(c), comm, options);
    std::unique_ptr<Cache> cache = layer->NewCache(1, 16, DType::kF32, MlaForm::kAuto);
    layer->Step({&prompt, {}, {}}, *cache, MlaForm::kAuto);
    // 8 tokens: 4 | 4, and rank 0 holds 2 of its 4 already.
    testing::ExpectError(
        [&] {
          layer->Step({&big, {}, {}}, *cache, MlaForm::kAuto);
        },
        ErrorKind::kCapacity, {"rank 0"});
    const Tensor got = layer->Step({&token, {}, {}}, *cache, MlaForm::kAuto);
    EXPECT_LT(RelativeError(got, expected), 1e-5) << "rank " << rank;
  });
}

// Cache::Clear() forgets every token: the next step starts each rank's share afresh.
TEST(ContextParallel, ClearStartsAfresh) {
  const ModelConfig c = testing::SmallGqaConfig(4, 2);
  const Tensor prompt = RandomUniform({2, 5, 64}, 17, 1.0f);
  const Tensor token = RandomUniform({2, 1, 64}, 18, 1.0f);
  const Tensor expected = MakeLayer(c)->Forward({&prompt, {}, {}}, MlaForm::kAuto);
  OnRanks(2, [&](int rank, std::shared_ptr<Communicator> comm) {
    const auto layer = MakeContextParallelLayer(MakeLayer(c), comm);
    std::unique_ptr<Cache> cache = layer->NewCache(2, 16, DType::kF32, MlaForm::kAuto);
    const auto& shard = dynamic_cast<const ContextShardCache&>(*cache);
    layer->Step({&prompt, {}, {}}, *cache, MlaForm::kAuto);
    layer->Step({&token, {}, {}}, *cache, MlaForm::kAuto);
    cache->Clear();
    const Tensor got = layer->Step({&prompt, {}, {}}, *cache, MlaForm::kAuto);
    EXPECT_LT(RelativeError(got, expected), 1e-5) << "rank " << rank;
    EXPECT_EQ(shard.held(1, 0), 3);
    EXPECT_EQ(shard.held(1, 1), 2);
    EXPECT_EQ(shard.local().length(1), rank == 0 ? 3 : 2);
  });
}

TEST(ContextParallel, RefusesPagedPoolsAndForeignCaches) {
  const ModelConfig c = testing::SmallGqaConfig(4, 2);
  const Tensor x = RandomUniform({1, 3, 64}, 16, 1.0f);
  OnRanks(1, [&](int /*rank*/, std::shared_ptr<Communicator> comm) {
    const auto layer = MakeContextParallelLayer(MakeLayer(c), comm);
    std::unique_ptr<PagedKVPool> pool = layer->NewPagedPool(4, 16, DType::kF32, MlaForm::kAuto);
    const PagedKVPool::SequenceId id = pool->Add();
    Tensor out;
    const PagedKVPool::SequenceId ids[] = {id};
    testing::ExpectError(
        [&] {
          layer->StepPagedInto({&x, {}, {}}, *pool, ids, MlaForm::kAuto, out);
        },
        ErrorKind::kUnsupported, {"paged"});
    KVCache plain_cache(1, 8, 2, 16, 16, DType::kF32);
    testing::ExpectError(
        [&] {
          layer->StepInto({&x, {}, {}}, plain_cache, MlaForm::kAuto, out);
        },
        ErrorKind::kInvalidArgument, {"ContextShardCache"});
  });
}

}  // namespace
}  // namespace attn
