// SPDX-License-Identifier: Apache-2.0
// The AMX attention kernel (bf16 K/V, prefill-sized blocks) run explicitly against a float64
// reference and against the reference kernel, across head widths (64, 128, 192 keys with 128
// values, aliased values), group ratios 1/4/8, causal blocks at first_query_slot offsets, sliding
// windows, chunks, padding, soft-capping, sinks, ALiBi, lengths off the 16/32/64 grid, 16 to 300
// queries, contiguous and paged views. FlashAttention's rule: the AMX error against float64 stays
// within twice the error of the AVX-512 bf16 kernel (vdpbf16ps, fp32 P·V) plus a small floor.
// Skipped where the CPU (or ATTN_DISABLE_AMX) leaves AMX off.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attn/dtype.h"
#include "attn/kernels.h"
#include "attn/threads.h"
#include "kernels/cpu/flash_attention.h"
#include "kernels/cpu/isa.h"

namespace attn {
namespace {

struct AmxCase {
  int64_t heads, kv_heads, key_dim, value_dim, queries, length;
  int64_t first_slot = -1;  // -1: length − queries (causal) or 0
  int64_t window = 0;
  int64_t chunk = 0;
  bool causal = true;
  bool padding = false;
  bool aliased = false;  // values = the first value_dim entries of the key rows (absorbed MLA)
  float softcap = 0.0f;
  bool sinks = false;
  bool alibi = false;
  int64_t page_size = 0;  // > 0: paged pool, pages in shuffled order
};

std::string Describe(const AmxCase& c) {
  return "H" + std::to_string(c.heads) + " G" + std::to_string(c.kv_heads) + " D" +
         std::to_string(c.key_dim) + "x" + std::to_string(c.value_dim) + " S" +
         std::to_string(c.queries) + " T" + std::to_string(c.length) + " first" +
         std::to_string(c.first_slot) + " W" + std::to_string(c.window) + " C" +
         std::to_string(c.chunk) + (c.causal ? "" : " full") + (c.padding ? " pad" : "") +
         (c.aliased ? " alias" : "") + " cap" + std::to_string(c.softcap) +
         (c.sinks ? " sinks" : "") + (c.alibi ? " alibi" : "") + " page" +
         std::to_string(c.page_size);
}

// One case's inputs, stored as bf16 (contiguous token-major [T][G][D], or a paged pool
// [pages][G][page_size][D] with a shuffled page table), and its problem.
struct Inputs {
  std::vector<float> q;
  std::vector<uint16_t> keys, values;  // bf16 bits
  std::vector<uint8_t> keep;
  std::vector<int32_t> page_table;
  std::vector<float> sinks, slopes;
  AttentionProblem problem;
};

float Uniform(std::mt19937& rng, float scale) {
  return std::uniform_real_distribution<float>(-scale, scale)(rng);
}

void Build(const AmxCase& c, Inputs& in) {
  std::mt19937 rng(static_cast<uint32_t>(c.heads * 131 + c.queries * 7 + c.length));
  const int64_t g_count = c.kv_heads;
  in.q.resize(static_cast<size_t>(c.queries * c.heads * c.key_dim));
  for (float& x : in.q) x = Uniform(rng, 1.0f);
  const int64_t value_row = c.aliased ? c.key_dim : c.value_dim;
  const int64_t pages = c.page_size > 0 ? (c.length + c.page_size - 1) / c.page_size : 0;
  const int64_t slots = c.page_size > 0 ? pages * c.page_size : c.length;
  in.keys.resize(static_cast<size_t>(slots * g_count * c.key_dim));
  in.values.resize(static_cast<size_t>(slots * g_count * value_row));
  for (uint16_t& x : in.keys) x = F32ToBF16(Uniform(rng, 1.0f));
  for (uint16_t& x : in.values) x = F32ToBF16(Uniform(rng, 1.0f));
  in.keep.assign(static_cast<size_t>(slots), 1);
  if (c.padding) {
    for (int64_t t = 0; t < slots; ++t) in.keep[t] = (t % 7 == 3 || t < 2) ? 0 : 1;
  }
  in.sinks.resize(static_cast<size_t>(c.heads));
  for (float& x : in.sinks) x = Uniform(rng, 3.0f);
  in.slopes.resize(static_cast<size_t>(c.heads));
  for (int64_t h = 0; h < c.heads; ++h) in.slopes[h] = std::exp2(-8.0f * (h + 1) / c.heads);

  AttentionProblem& p = in.problem;
  p = AttentionProblem{};
  p.queries = {in.q.data(), c.queries, c.heads, c.key_dim};
  p.kv.dtype = DType::kBF16;
  p.kv.keys = in.keys.data();
  p.kv.values = c.aliased ? in.keys.data() : in.values.data();
  p.kv.kv_heads = g_count;
  p.kv.key_dim = c.key_dim;
  p.kv.value_dim = c.value_dim;
  p.kv.length = c.length;
  p.kv.keep = in.keep.data();
  if (c.page_size > 0) {
    in.page_table.resize(static_cast<size_t>(pages));
    std::iota(in.page_table.begin(), in.page_table.end(), 0);
    std::shuffle(in.page_table.begin(), in.page_table.end(), rng);
    p.kv.page_size = c.page_size;
    p.kv.page_table = in.page_table.data();
    p.kv.key_token_stride = c.key_dim;
    p.kv.key_head_stride = c.page_size * c.key_dim;
    p.kv.key_page_stride = g_count * c.page_size * c.key_dim;
    p.kv.value_token_stride = value_row;
    p.kv.value_head_stride = c.page_size * value_row;
    p.kv.value_page_stride = g_count * c.page_size * value_row;
  } else {
    p.kv.key_head_stride = c.key_dim;
    p.kv.key_token_stride = g_count * c.key_dim;
    p.kv.value_head_stride = value_row;
    p.kv.value_token_stride = g_count * value_row;
  }
  const int64_t first = c.first_slot >= 0 ? c.first_slot : (c.causal ? c.length - c.queries : 0);
  p.visibility = {first, c.window, c.causal, c.chunk};
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.key_dim));
  p.softcap = c.softcap;
  if (c.sinks) p.sinks = in.sinks.data();
  if (c.alibi) p.alibi_slopes = in.slopes.data();
}

// The problem's definition (kernels.h) in float64 from the stored bf16 K/V and fp32 Q.
std::vector<double> Reference64(const AttentionProblem& p) {
  const KVView& kv = p.kv;
  const int64_t group = p.queries.heads / kv.kv_heads;
  const uint16_t* keys = static_cast<const uint16_t*>(kv.keys);
  const uint16_t* values = static_cast<const uint16_t*>(kv.values);
  std::vector<double> out(static_cast<size_t>(p.queries.tokens * p.queries.heads * kv.value_dim));
  std::vector<double> scores(static_cast<size_t>(kv.length));
  for (int64_t s = 0; s < p.queries.tokens; ++s) {
    const int64_t slot = p.visibility.first_query_slot + s;
    for (int64_t h = 0; h < p.queries.heads; ++h) {
      const int64_t g = h / group;
      const float* q = p.queries.data + (s * p.queries.heads + h) * p.queries.dim;
      double top = -INFINITY;
      for (int64_t t = 0; t < kv.length; ++t) {
        bool visible = kv.keep == nullptr || kv.keep[KeepOffset(kv, t)] != 0;
        if (p.visibility.causal) {
          visible = visible && t <= slot;
          if (p.visibility.window > 0) visible = visible && t > slot - p.visibility.window;
          if (p.visibility.chunk > 0) {
            visible = visible && t >= ChunkStart(slot, p.visibility.chunk, 0);
          }
        }
        if (!visible) {
          scores[t] = -INFINITY;
          continue;
        }
        const uint16_t* k = keys + KeyOffset(kv, g, t);
        double dot = 0.0;
        for (int64_t i = 0; i < p.queries.dim; ++i) dot += double{q[i]} * BF16ToF32(k[i]);
        double score = dot * p.scale;
        if (p.softcap > 0.0f) score = p.softcap * std::tanh(score / p.softcap);
        if (p.alibi_slopes != nullptr) score += double{p.alibi_slopes[h]} * (t - slot);
        scores[t] = score;
        top = std::max(top, score);
      }
      double* o = out.data() + (s * p.queries.heads + h) * kv.value_dim;
      if (top == -INFINITY) continue;  // no visible key: zeros
      double sum = p.sinks != nullptr ? std::exp(double{p.sinks[h]} - top) : 0.0;
      for (int64_t t = 0; t < kv.length; ++t) {
        if (scores[t] == -INFINITY) continue;
        const double w = std::exp(scores[t] - top);
        sum += w;
        const uint16_t* v = values + ValueOffset(kv, g, t);
        for (int64_t d = 0; d < kv.value_dim; ++d) o[d] += w * BF16ToF32(v[d]);
      }
      for (int64_t d = 0; d < kv.value_dim; ++d) o[d] /= sum;
    }
  }
  return out;
}

double MaxError(const std::vector<float>& got, const std::vector<double>& want) {
  double error = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(double{got[i]} - want[i]);
    error = std::isnan(e) ? INFINITY : std::max(error, e);
  }
  return error;
}

std::vector<float> RunKernel(void (*kernel)(const AttentionProblem&), Inputs& in) {
  const AttentionProblem& p = in.problem;
  std::vector<float> out(static_cast<size_t>(p.queries.tokens * p.queries.heads * p.kv.value_dim),
                         -7.0f);
  AttentionProblem run = p;
  run.out = out.data();
  kernel(run);
  return out;
}

void RunAvx512Bf16(const AttentionProblem& p) { cpu::FlashAttendAvx512(p, true); }
void RunReference(const AttentionProblem& p) { ReferenceBackend().attend(p); }
void RunDefault(const AttentionProblem& p) { DefaultBackend().attend(p); }

bool AmxActive() { return cpu::ActiveIsa().amx; }

void CheckCase(const AmxCase& c) {
  SCOPED_TRACE(Describe(c));
  Inputs in;
  Build(c, in);
  std::vector<float> scratch(1);
  AttentionProblem checked = in.problem;
  checked.out = scratch.data();
  ValidateAttentionProblem(checked);
  ASSERT_TRUE(cpu::FlashAttendAmxSupports(in.problem, cpu::ActiveIsa()));
  const std::vector<double> exact = Reference64(in.problem);
  const std::vector<float> amx = RunKernel(&cpu::FlashAttendAmx, in);
  const std::vector<float> avx = RunKernel(&RunAvx512Bf16, in);
  const std::vector<float> reference = RunKernel(&RunReference, in);
  const double amx_error = MaxError(amx, exact);
  const double avx_error = MaxError(avx, exact);
  // FlashAttention's rule, with a floor for what the AVX-512 path does not do: P rounded to bf16
  // before P·V moves each weight by up to 2^-9 of itself, hence the output by up to
  // 2^-9 · max|v| ≈ 2e-3 here (|v| <= 1). Measured over these cases: the AMX error is 1.2e-7 to
  // 2.0e-3, 3x the AVX-512 bf16 path's on average (at most 4.3x).
  EXPECT_LE(amx_error, 2.0 * avx_error + 2e-3) << "AVX-512 bf16 error " << avx_error;
  // And the existing kernel-vs-reference tolerance for bf16 prefill blocks.
  std::vector<double> reference64(reference.begin(), reference.end());
  EXPECT_LE(MaxError(amx, reference64), 2e-2);
  // The backend dispatches this problem to the AMX kernel: the same bits.
  EXPECT_EQ(RunKernel(&RunDefault, in), amx);
}

TEST(AmxAttention, HeadWidthsAndGroupRatios) {
  if (!AmxActive()) GTEST_SKIP() << "no AMX (or ATTN_DISABLE_AMX): nothing to compare";
  for (int64_t dk : {64, 128}) {
    for (int64_t group : {1, 4, 8}) {
      CheckCase({.heads = 2 * group,
                 .kv_heads = 2,
                 .key_dim = dk,
                 .value_dim = dk,
                 .queries = 37,
                 .length = 101});
    }
  }
  // MLA-like widths: 192-wide keys, 128-wide values; and values aliasing the keys.
  CheckCase(
      {.heads = 8, .kv_heads = 8, .key_dim = 192, .value_dim = 128, .queries = 50, .length = 77});
  CheckCase({.heads = 16,
             .kv_heads = 1,
             .key_dim = 96,
             .value_dim = 64,
             .queries = 19,
             .length = 200,
             .aliased = true});
}

TEST(AmxAttention, QueryCountsAndLengthsOffTheTileGrid) {
  if (!AmxActive()) GTEST_SKIP() << "no AMX (or ATTN_DISABLE_AMX): nothing to compare";
  for (int64_t queries : {16, 17, 33, 64, 129, 300}) {
    for (int64_t extra : {0, 1, 31, 65}) {
      CheckCase({.heads = 8,
                 .kv_heads = 2,
                 .key_dim = 128,
                 .value_dim = 128,
                 .queries = queries,
                 .length = queries + extra});
    }
  }
  // Odd widths: keys not a multiple of 32, values not a multiple of 16.
  CheckCase(
      {.heads = 4, .kv_heads = 1, .key_dim = 40, .value_dim = 24, .queries = 21, .length = 90});
  CheckCase({.heads = 4,
             .kv_heads = 4,
             .key_dim = 80,
             .value_dim = 72,
             .queries = 48,
             .length = 48,
             .padding = true});
}

TEST(AmxAttention, VisibilityVariants) {
  if (!AmxActive()) GTEST_SKIP() << "no AMX (or ATTN_DISABLE_AMX): nothing to compare";
  const AmxCase base{
      .heads = 8, .kv_heads = 2, .key_dim = 64, .value_dim = 64, .queries = 70, .length = 300};
  AmxCase c = base;
  c.first_slot = 100;  // a block in the middle of the cache: later keys are invisible
  CheckCase(c);
  c.first_slot = 0;
  CheckCase(c);
  c = base;
  c.window = 40;
  CheckCase(c);
  c.window = 1;
  CheckCase(c);
  c = base;
  c.chunk = 48;
  CheckCase(c);
  c = base;
  c.padding = true;
  CheckCase(c);
  c = base;
  c.causal = false;
  CheckCase(c);
  c.padding = true;
  CheckCase(c);
  // Every key of the first rows is padding: those rows are zeros.
  c = base;
  c.first_slot = 0;
  c.padding = true;
  CheckCase(c);
}

TEST(AmxAttention, SoftCapSinksAndAlibi) {
  if (!AmxActive()) GTEST_SKIP() << "no AMX (or ATTN_DISABLE_AMX): nothing to compare";
  const AmxCase base{
      .heads = 16, .kv_heads = 4, .key_dim = 128, .value_dim = 128, .queries = 45, .length = 150};
  AmxCase c = base;
  c.softcap = 5.0f;
  CheckCase(c);
  c = base;
  c.sinks = true;
  CheckCase(c);
  c = base;
  c.alibi = true;
  CheckCase(c);
  c.window = 64;
  c.softcap = 30.0f;
  c.sinks = true;
  c.padding = true;
  CheckCase(c);
}

TEST(AmxAttention, PagedViews) {
  if (!AmxActive()) GTEST_SKIP() << "no AMX (or ATTN_DISABLE_AMX): nothing to compare";
  for (int64_t page : {16, 32, 48, 64, 256}) {
    CheckCase({.heads = 8,
               .kv_heads = 2,
               .key_dim = 128,
               .value_dim = 128,
               .queries = 60,
               .length = 333,
               .padding = true,
               .page_size = page});
  }
  CheckCase({.heads = 32,
             .kv_heads = 8,
             .key_dim = 64,
             .value_dim = 64,
             .queries = 16,
             .length = 500,
             .window = 100,
             .alibi = true,
             .page_size = 16});
}

// An output of 8 MiB or more is written with streaming stores: the same values, aligned or not,
// and nothing outside it.
TEST(AmxAttention, LargeStreamedOutputMatchesAvx512Kernel) {
  if (!AmxActive()) GTEST_SKIP() << "no AMX (or ATTN_DISABLE_AMX): nothing to compare";
  Inputs in;
  Build(
      {.heads = 32, .kv_heads = 8, .key_dim = 128, .value_dim = 128, .queries = 520, .length = 600},
      in);
  const size_t count = static_cast<size_t>(520 * 32 * 128);
  std::vector<float> storage(count + 32);
  float* aligned =
      storage.data() + (16 - reinterpret_cast<uintptr_t>(storage.data()) % 64 / 4) % 16;
  AttentionProblem p = in.problem;
  p.out = aligned;
  cpu::FlashAttendAmx(p);
  const std::vector<float> amx(aligned, aligned + count);
  const std::vector<float> avx = RunKernel(&RunAvx512Bf16, in);
  double error = 0.0;
  for (size_t i = 0; i < count; ++i) error = std::max(error, double{std::fabs(amx[i] - avx[i])});
  EXPECT_LE(error, 2e-2);
  // Rows starting 4 bytes past a 64-byte boundary: ordinary stores at the row ends.
  AttentionProblem shifted = p;
  shifted.out = aligned + 1;
  std::fill(storage.begin(), storage.end(), -7.0f);
  cpu::FlashAttendAmx(shifted);
  EXPECT_EQ(std::vector<float>(aligned + 1, aligned + 1 + count), amx);
  EXPECT_EQ(aligned[0], -7.0f);
  EXPECT_EQ(aligned[count + 1], -7.0f);
}

// Items depend on the shape alone: the same bits with any number of threads.
TEST(AmxAttention, ThreadCountDoesNotChangeResults) {
  if (!AmxActive()) GTEST_SKIP() << "no AMX (or ATTN_DISABLE_AMX): nothing to compare";
  Inputs in;
  Build({.heads = 32,
         .kv_heads = 8,
         .key_dim = 64,
         .value_dim = 64,
         .queries = 200,
         .length = 700,
         .window = 300},
        in);
  const int before = NumThreads();
  SetNumThreads(1);
  const std::vector<float> one = RunKernel(&cpu::FlashAttendAmx, in);
  SetNumThreads(3);
  const std::vector<float> three = RunKernel(&cpu::FlashAttendAmx, in);
  SetNumThreads(before);
  EXPECT_EQ(one, three);
}

TEST(AmxAttention, NonFiniteScoresAreReported) {
  if (!AmxActive()) GTEST_SKIP() << "no AMX (or ATTN_DISABLE_AMX): nothing to compare";
  Inputs in;
  Build({.heads = 4, .kv_heads = 1, .key_dim = 64, .value_dim = 64, .queries = 20, .length = 40},
        in);
  std::atomic<bool> flag{false};
  in.problem.non_finite_scores = &flag;
  RunKernel(&cpu::FlashAttendAmx, in);
  EXPECT_FALSE(flag.load());
  in.keys[5 * 64 + 3] = 0x7fc0;  // NaN in key 5, which every row sees
  RunKernel(&cpu::FlashAttendAmx, in);
  EXPECT_TRUE(flag.load());
}

TEST(AmxAttention, DecodeStaysOnTheAvx512Kernel) {
  Inputs in;
  Build({.heads = 32, .kv_heads = 8, .key_dim = 128, .value_dim = 128, .queries = 1, .length = 64},
        in);
  EXPECT_FALSE(cpu::FlashAttendAmxSupports(in.problem, cpu::ActiveIsa()));
  Build({.heads = 32, .kv_heads = 8, .key_dim = 128, .value_dim = 128, .queries = 3, .length = 64},
        in);
  EXPECT_FALSE(cpu::FlashAttendAmxSupports(in.problem, cpu::ActiveIsa()));
  Build({.heads = 32, .kv_heads = 8, .key_dim = 128, .value_dim = 128, .queries = 4, .length = 64},
        in);
  EXPECT_EQ(cpu::FlashAttendAmxSupports(in.problem, cpu::ActiveIsa()), AmxActive());
}

}  // namespace
}  // namespace attn
