// SPDX-License-Identifier: Apache-2.0
// The decode path of the AVX-512 kernel that scores and accumulates fp8 (E4M3), int8, bf16 and
// f16 tiles straight from the stored elements, widened in registers
// (src/kernels/cpu/narrow_row_dot.h), against the reference kernel on the same pages: outputs and
// log-sum-exps agree to fp32 rounding (1e-5, the widened-tile path's tolerance) on every case: 1 …
// 8 query rows per kv head, pages of 16 (tiles spanning two pages) and 64, a contiguous token-major
// view (all kv heads in one item), latent rows with values aliasing keys, ragged key widths,
// windows, padding, sinks, soft-capping, ALiBi, contexts long enough that decode items are split
// along their keys and merged, and fp8 rows with subnormal codes (exact on this path). The path
// uses no bf16 dot products: the same bits with and without them. Value widths that are not a
// multiple of 32 keep the widened tile.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "attn/dtype.h"
#include "attn/kernels.h"
#include "kernels/cpu/element_load.h"
#include "kernels/cpu/flash_attention.h"
#include "kernels/cpu/isa.h"

namespace attn {
namespace {

enum class Layout { kPagedHeadMajor, kContiguousTokenMajor, kPagedLatent };

struct Case {
  int64_t heads, kv_heads, tokens;  // queries: tokens × heads, tokens × heads / kv_heads rows
  int64_t length, page_size;
  int64_t key_dim, value_dim;
  Layout layout = Layout::kPagedHeadMajor;
  int64_t window = 0;
  bool padding = false, sinks = false, softcap = false, alibi = false;
};

std::string Name(const Case& c) {
  return "H" + std::to_string(c.heads) + " G" + std::to_string(c.kv_heads) + " S" +
         std::to_string(c.tokens) + " T" + std::to_string(c.length) + " P" +
         std::to_string(c.page_size) + " D" + std::to_string(c.key_dim) + "/" +
         std::to_string(c.value_dim) +
         (c.layout == Layout::kContiguousTokenMajor ? " token-major"
          : c.layout == Layout::kPagedLatent        ? " latent"
                                                    : "") +
         (c.window > 0 ? " window " + std::to_string(c.window) : "") +
         (c.padding ? " padding" : "") + (c.sinks ? " sinks" : "") + (c.softcap ? " softcap" : "") +
         (c.alibi ? " alibi" : "");
}

const Case kCases[] = {
    // Llama-3-8B's decode (GQA 32/8, 4 rows) over pages of 64 and 16, split and unsplit.
    {32, 8, 1, 1500, 64, 128, 128},
    {32, 8, 1, 1500, 16, 128, 128},
    {8, 2, 1, 200, 16, 128, 128},
    // 1, 2, 3, 5, 6, 7, 8 rows per kv head (MHA, GQA groups, speculative tokens).
    {4, 4, 1, 700, 16, 128, 64},
    {4, 2, 1, 333, 64, 64, 64},
    {6, 3, 1, 500, 16, 120, 96},  // a ragged last key chunk of 24, values 64 + 32 wide
    {6, 2, 1, 700, 16, 128, 128},
    {10, 2, 1, 500, 64, 128, 192},
    {4, 2, 3, 600, 16, 64, 128},
    {7, 1, 1, 400, 16, 96, 64},
    {8, 1, 1, 450, 64, 128, 128},
    {4, 1, 2, 900, 16, 128, 64},
    // Pages that are not a multiple of the 32-key tile: each head's rows of a page are walked as
    // one span (the last tile of a page clipped at its end).
    {8, 2, 1, 500, 48, 128, 128},
    {8, 2, 2, 333, 80, 64, 64, Layout::kPagedHeadMajor, 100, true},
    // Masks and score rules.
    {8, 2, 1, 1000, 16, 128, 128, Layout::kPagedHeadMajor, 300, true},
    {8, 2, 2, 777, 64, 128, 128, Layout::kPagedHeadMajor, 0, true, true},
    {8, 2, 1, 640, 16, 128, 128, Layout::kPagedHeadMajor, 100, false, true, true, true},
    {4, 4, 1, 257, 16, 80, 64, Layout::kPagedHeadMajor, 0, true, false, true},
    // All kv heads in one item (token-major), and MLA's latent rows (values alias the keys).
    {8, 2, 1, 900, 0, 128, 128, Layout::kContiguousTokenMajor, 0, true, true},
    {16, 4, 1, 300, 0, 64, 64, Layout::kContiguousTokenMajor, 64},
    {4, 1, 1, 600, 64, 576, 512, Layout::kPagedLatent},
    {8, 1, 1, 300, 16, 576, 512, Layout::kPagedLatent, 0, true, true},
};

// One case's fp8, int8, bf16 or f16 cache and its problem (16-bit elements: two bytes each in
// the code vectors, no scales).
struct Fixture {
  std::vector<uint8_t> key_codes, value_codes, keep;
  std::vector<float> key_scales, value_scales;
  std::vector<int32_t> page_table;
  std::vector<float> queries, sinks, slopes;
  AttentionProblem problem;
};

// One row of `width`: normal elements times a magnitude that varies by row, an outlier in some
// rows, and every 37th element small enough to be a subnormal E4M3 code.
void DrawRow(std::mt19937& rng, int64_t index, int64_t width, float* row) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float magnitude = std::ldexp(1.0f, static_cast<int>(index % 7) - 3);
  for (int64_t i = 0; i < width; ++i) {
    row[i] = normal(rng) * magnitude;
    if (i % 37 == 11) row[i] *= 1e-4f;
  }
  if (index % 13 == 7) row[index % width] = 30.0f * magnitude;
}

Fixture Build(const Case& c, DType dtype, uint32_t seed) {
  Fixture f;
  std::mt19937 rng(seed);
  const int64_t G = c.kv_heads, T = c.length, dk = c.key_dim, dv = c.value_dim;
  const bool latent = c.layout == Layout::kPagedLatent;
  const int64_t P = c.layout == Layout::kContiguousTokenMajor ? 0 : c.page_size;
  KVView& kv = f.problem.kv;
  kv.dtype = dtype;
  kv.kv_heads = G;
  kv.key_dim = dk;
  kv.value_dim = dv;
  kv.length = T;
  kv.page_size = P;
  int64_t slots = T;  // token slots of storage
  if (P > 0) {
    // Pages in reverse order, one spare at each end, so that neighbours are never adjacent.
    const int64_t pages = (T + P - 1) / P;
    for (int64_t i = 0; i < pages; ++i) f.page_table.push_back(static_cast<int32_t>(pages - i));
    slots = (pages + 2) * P;
    kv.page_table = f.page_table.data();
    kv.key_head_stride = P * dk;
    kv.key_token_stride = dk;
    kv.key_page_stride = G * P * dk;
    if (latent) {
      kv.key_head_stride = 0;
      kv.key_page_stride = P * dk;
    }
  } else {
    kv.key_head_stride = dk;
    kv.key_token_stride = G * dk;
    kv.scale_head_stride = T;
  }
  const bool sixteen_bit = dtype == DType::kBF16 || dtype == DType::kF16;
  const size_t element = sixteen_bit ? 2 : 1;
  // Stores `width` values at element `offset` of `codes` in the case's type; returns the row's
  // scale (1 for 16-bit elements, which have none).
  auto store = [dtype, sixteen_bit](std::vector<uint8_t>& codes, int64_t offset, int64_t width,
                                    const float* values) {
    if (!sixteen_bit) return cpu::QuantizeRow(dtype, codes.data(), offset, width, values);
    for (int64_t i = 0; i < width; ++i) {
      const uint16_t bits = dtype == DType::kBF16 ? F32ToBF16(values[i]) : F32ToF16(values[i]);
      std::memcpy(codes.data() + 2 * (offset + i), &bits, sizeof(bits));
    }
    return 1.0f;
  };
  f.key_codes.assign(static_cast<size_t>(slots * G * dk) * element, 0);
  f.key_scales.assign(static_cast<size_t>(slots * G), -1.0f);
  f.keep.assign(static_cast<size_t>(slots), 1);
  if (latent) {
    kv.value_head_stride = kv.key_head_stride;
    kv.value_token_stride = kv.key_token_stride;
    kv.value_page_stride = kv.key_page_stride;
  } else if (P > 0) {
    kv.value_head_stride = P * dv;
    kv.value_token_stride = dv;
    kv.value_page_stride = G * P * dv;
    f.value_codes.assign(static_cast<size_t>(slots * G * dv) * element, 0);
    f.value_scales.assign(f.key_scales.size(), -1.0f);
  } else {
    kv.value_head_stride = dv;
    kv.value_token_stride = G * dv;
    f.value_codes.assign(static_cast<size_t>(slots * G * dv) * element, 0);
    f.value_scales.assign(f.key_scales.size(), -1.0f);
  }
  kv.keys = f.key_codes.data();
  kv.key_scales = sixteen_bit ? nullptr : f.key_scales.data();
  kv.values = latent ? f.key_codes.data() : f.value_codes.data();
  kv.value_scales = sixteen_bit ? nullptr : latent ? f.key_scales.data() : f.value_scales.data();
  kv.keep = c.padding ? f.keep.data() : nullptr;

  std::vector<float> row(static_cast<size_t>(std::max(dk, dv)));
  for (int64_t t = 0; t < T; ++t) {
    if (c.padding && (t % 9 == 4 || (t / 16) % 11 == 3)) f.keep[KeepOffset(kv, t)] = 0;
    for (int64_t g = 0; g < G; ++g) {
      // Latent rows: one row of dk codes and scale, its first dv entries the values.
      DrawRow(rng, t * G + g, dk, row.data());
      f.key_scales[static_cast<size_t>(ScaleOffset(kv, g, t))] =
          store(f.key_codes, KeyOffset(kv, g, t), dk, row.data());
      if (latent) continue;
      DrawRow(rng, t * G + g + 5, dv, row.data());
      f.value_scales[static_cast<size_t>(ScaleOffset(kv, g, t))] =
          store(f.value_codes, ValueOffset(kv, g, t), dv, row.data());
    }
  }

  AttentionProblem& p = f.problem;
  f.queries.resize(static_cast<size_t>(c.tokens * c.heads * dk));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : f.queries) x = normal(rng);
  p.queries = {f.queries.data(), c.tokens, c.heads, dk};
  p.visibility.first_query_slot = T - c.tokens;
  p.visibility.window = c.window;
  p.scale = 1.0f / std::sqrt(static_cast<float>(dk));
  if (c.sinks) {
    for (int64_t h = 0; h < c.heads; ++h) f.sinks.push_back(normal(rng) + 1.0f);
    p.sinks = f.sinks.data();
  }
  if (c.softcap) p.softcap = 3.0f;
  if (c.alibi) {
    for (int64_t h = 0; h < c.heads; ++h)
      f.slopes.push_back(std::ldexp(1.0f, -1 - 2 * static_cast<int>(h)));
    p.alibi_slopes = f.slopes.data();
  }
  return f;
}

struct Result {
  std::vector<float> out, lse;
};

// The reference, or the AVX-512 kernel with the CPU's bf16 dot products or without them.
enum class Kernel { kReference, kFast, kFastWithoutBf16 };

Result RunKernel(const Fixture& f, Kernel kernel) {
  Result r;
  AttentionProblem p = f.problem;
  r.out.assign(static_cast<size_t>(p.queries.tokens * p.queries.heads * p.kv.value_dim), -7.0f);
  r.lse.assign(static_cast<size_t>(p.queries.tokens * p.queries.heads), -7.0f);
  p.out = r.out.data();
  p.lse = r.lse.data();
  if (kernel == Kernel::kReference) {
    ReferenceBackend().attend(p);
  } else {
    cpu::FlashAttendAvx512(p, kernel == Kernel::kFast && cpu::ActiveIsa().bf16_dot);
  }
  return r;
}

bool HaveAvx512() { return cpu::ActiveIsa().isa == cpu::Isa::kAvx512; }

// max |a − b| / max |b|.
double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0.0, ref = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    ref = std::max(ref, std::fabs(static_cast<double>(b[i])));
  }
  return ref > 0.0 ? diff / ref : diff;
}

// E4M3 codes with a zero exponent field among the case's keys and values.
int64_t SubnormalCodes(const Fixture& f) {
  int64_t count = 0;
  for (const uint8_t code : f.key_codes) count += (code & 0x78) == 0 && (code & 0x07) != 0;
  for (const uint8_t code : f.value_codes) count += (code & 0x78) == 0 && (code & 0x07) != 0;
  return count;
}

constexpr DType kCodeTypes[] = {DType::kF8E4M3, DType::kI8, DType::kBF16, DType::kF16};

TEST(NarrowRowDot, MatchesTheReferenceOnEveryCase) {
  if (!HaveAvx512()) GTEST_SKIP() << "no AVX-512: nothing to compare";
  for (const DType dtype : kCodeTypes) {
    for (const Case& c : kCases) {
      SCOPED_TRACE(std::string(DTypeName(dtype)) + " " + Name(c));
      const Fixture f = Build(c, dtype, 3);
      if (dtype == DType::kF8E4M3) {
        ASSERT_GT(SubnormalCodes(f), 0);
      }
      const Result want = RunKernel(f, Kernel::kReference);
      const Result got = RunKernel(f, Kernel::kFast);
      EXPECT_LT(RelativeError(got.out, want.out), 1e-5);
      for (size_t row = 0; row < want.lse.size(); ++row) {
        EXPECT_NEAR(got.lse[row], want.lse[row], 1e-5 * (1.0 + std::fabs(want.lse[row])))
            << "row " << row;
      }
    }
  }
}

TEST(NarrowRowDot, SameBitsWithoutBf16DotAndOtherWidthsStayExact) {
  if (!HaveAvx512()) GTEST_SKIP() << "no AVX-512: nothing to compare";
  for (const DType dtype : kCodeTypes) {
    for (const Case& c : kCases) {
      SCOPED_TRACE(std::string(DTypeName(dtype)) + " " + Name(c));
      const Fixture f = Build(c, dtype, 31);
      const Result without = RunKernel(f, Kernel::kFastWithoutBf16);
      EXPECT_LT(RelativeError(without.out, RunKernel(f, Kernel::kReference).out), 1e-5);
      EXPECT_EQ(RunKernel(f, Kernel::kFast).out, without.out);
    }
    // Value widths that are not a multiple of 32 take the widened-tile path.
    for (const int64_t value_dim : {40, 80}) {
      const Case ragged = {8, 2, 1, 300, 16, 128, value_dim};
      SCOPED_TRACE(std::string(DTypeName(dtype)) + " " + Name(ragged));
      const Fixture f = Build(ragged, dtype, 33);
      EXPECT_LT(
          RelativeError(RunKernel(f, Kernel::kFast).out, RunKernel(f, Kernel::kReference).out),
          1e-5);
    }
  }
}

}  // namespace
}  // namespace attn
