// SPDX-License-Identifier: Apache-2.0
// Attention over a paged K/V view (KVView::page_size > 0): pages in shuffled order, head-major or
// token-major inside a page, keep flags paged alike, values aliasing keys (the MLA latent row).
// The reference kernel gives exactly what it gives on the same values stored contiguously, and
// the fast kernel matches it at every page size (16: tiles shorter than the kernel's 32 keys;
// 48: tiles clipped where a page ends), T around page edges, decode and prefill, chunk, window
// and split-key decode.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attn/dtype.h"
#include "attn/kernels.h"
#include "kernels/cpu/element_load.h"
#include "kernels/cpu/isa.h"
#include "test_util.h"

namespace attn {
namespace {

struct PagedCase {
  int64_t heads, kv_heads, key_dim, value_dim, queries, length, page_size;
  bool token_major;  // [page_size][G][d] inside a page, else [G][page_size][d]
  bool aliased;      // values = the first value_dim entries of the key rows
  int64_t window = 0;
  int64_t chunk = 0;
};

std::string Name(const PagedCase& c) {
  return "H" + std::to_string(c.heads) + "G" + std::to_string(c.kv_heads) + "D" +
         std::to_string(c.key_dim) + "S" + std::to_string(c.queries) + "T" +
         std::to_string(c.length) + "P" + std::to_string(c.page_size) +
         (c.token_major ? "tok" : "head") + (c.aliased ? "alias" : "") + "W" +
         std::to_string(c.window) + "C" + std::to_string(c.chunk);
}

// One sequence's K/V stored twice: contiguous head-major, and paged.
struct Stores {
  std::vector<std::byte> keys, values, paged_keys, paged_values;
  std::vector<uint8_t> keep, paged_keep;
  std::vector<int32_t> table;
  std::vector<float> queries;
};

Stores Make(const PagedCase& c, DType dtype) {
  std::mt19937 rng(static_cast<uint32_t>(c.length * 131 + c.page_size));
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const int64_t G = c.kv_heads, T = c.length, P = c.page_size;
  const int64_t pages = (T + P - 1) / P;
  const int64_t spare = 3;  // pages the sequence does not use, interleaved with its own
  const size_t e = DTypeSize(dtype);
  Stores s;
  s.keys.resize(static_cast<size_t>(G * T * c.key_dim) * e);
  s.values.resize(static_cast<size_t>(G * T * c.value_dim) * e);
  s.paged_keys.assign(static_cast<size_t>((pages + spare) * G * P * c.key_dim) * e,
                      std::byte{0x7f});  // NaN-ish filler: a stray read shows
  s.paged_values.assign(static_cast<size_t>((pages + spare) * G * P * c.value_dim) * e,
                        std::byte{0x7f});
  s.keep.resize(static_cast<size_t>(T));
  s.paged_keep.assign(static_cast<size_t>((pages + spare) * P), 1);
  std::vector<int32_t> order(static_cast<size_t>(pages + spare));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  s.table.assign(order.begin(), order.begin() + pages);
  std::vector<float> row(static_cast<size_t>(std::max(c.key_dim, c.value_dim)));
  auto page_offset = [&](int64_t t, int64_t g, int64_t width) {
    const int64_t page = s.table[static_cast<size_t>(t / P)];
    const int64_t u = t % P;
    const int64_t inside = c.token_major ? (u * G + g) * width : (g * P + u) * width;
    return page * G * P * width + inside;
  };
  for (int64_t t = 0; t < T; ++t) {
    s.keep[static_cast<size_t>(t)] = (t % 7 == 3) ? 0 : 1;
    s.paged_keep[static_cast<size_t>(s.table[static_cast<size_t>(t / P)] * P + t % P)] =
        s.keep[static_cast<size_t>(t)];
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t i = 0; i < c.key_dim; ++i) row[static_cast<size_t>(i)] = uniform(rng);
      cpu::StoreRow(dtype, s.keys.data(), (g * T + t) * c.key_dim, c.key_dim, row.data());
      cpu::StoreRow(dtype, s.paged_keys.data(), page_offset(t, g, c.key_dim), c.key_dim,
                    row.data());
      if (!c.aliased) {
        for (int64_t i = 0; i < c.value_dim; ++i) row[static_cast<size_t>(i)] = uniform(rng);
      }
      cpu::StoreRow(dtype, s.values.data(), (g * T + t) * c.value_dim, c.value_dim, row.data());
      cpu::StoreRow(dtype, s.paged_values.data(), page_offset(t, g, c.value_dim), c.value_dim,
                    row.data());
    }
  }
  s.queries.resize(static_cast<size_t>(c.queries * c.heads * c.key_dim));
  for (float& q : s.queries) q = uniform(rng);
  return s;
}

std::vector<float> Attend(const KernelBackend& backend, const PagedCase& c, DType dtype,
                          const Stores& s, bool paged) {
  AttentionProblem p;
  p.queries = {s.queries.data(), c.queries, c.heads, c.key_dim};
  KVView& kv = p.kv;
  kv.dtype = dtype;
  kv.kv_heads = c.kv_heads;
  kv.key_dim = c.key_dim;
  kv.value_dim = c.value_dim;
  kv.length = c.length;
  if (paged) {
    const int64_t P = c.page_size, G = c.kv_heads;
    kv.keys = s.paged_keys.data();
    kv.values = c.aliased ? s.paged_keys.data() : s.paged_values.data();
    const int64_t value_width = c.aliased ? c.key_dim : c.value_dim;
    kv.key_head_stride = c.token_major ? c.key_dim : P * c.key_dim;
    kv.key_token_stride = c.token_major ? G * c.key_dim : c.key_dim;
    kv.value_head_stride = c.token_major ? value_width : P * value_width;
    kv.value_token_stride = c.token_major ? G * value_width : value_width;
    kv.key_page_stride = G * P * c.key_dim;
    kv.value_page_stride = G * P * value_width;
    kv.page_size = P;
    kv.page_table = s.table.data();
    kv.keep = s.paged_keep.data();
  } else {
    kv.keys = s.keys.data();
    kv.values = c.aliased ? s.keys.data() : s.values.data();
    const int64_t value_width = c.aliased ? c.key_dim : c.value_dim;
    kv.key_head_stride = c.length * c.key_dim;
    kv.key_token_stride = c.key_dim;
    kv.value_head_stride = c.length * value_width;
    kv.value_token_stride = value_width;
    kv.keep = s.keep.data();
  }
  p.visibility = {c.length - c.queries, c.window};
  p.visibility.chunk = c.chunk;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.key_dim));
  std::vector<float> out(static_cast<size_t>(c.queries * c.heads * c.value_dim));
  p.out = out.data();
  ValidateAttentionProblem(p);
  backend.attend(p);
  return out;
}

class PagedAttentionTest : public ::testing::TestWithParam<PagedCase> {};

TEST_P(PagedAttentionTest, PagedEqualsContiguous) {
  const PagedCase c = GetParam();
  // The emulated run of test.sh (no AVX-512: the reference on both sides, about 50x slower)
  // keeps the shapes below a few million multiply-adds; they cover every address rule.
  if (cpu::ActiveIsa().isa != cpu::Isa::kAvx512 && c.heads * c.length * c.key_dim > 2000000) {
    GTEST_SKIP() << "large shape, no AVX-512";
  }
  for (const DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    const Stores s = Make(c, dtype);
    const std::vector<float> contiguous = Attend(ReferenceBackend(), c, dtype, s, false);
    // The reference reads the same values in the same order: bit for bit.
    EXPECT_EQ(Attend(ReferenceBackend(), c, dtype, s, true), contiguous);
    const std::vector<float> fast = Attend(DefaultBackend(), c, dtype, s, true);
    const bool decode_block = c.queries * (c.heads / c.kv_heads) <= 8;
    const double tolerance = dtype == DType::kBF16 && !decode_block ? 2e-2 : 1e-5;
    EXPECT_LT(
        testing::RelativeError(fast.data(), contiguous.data(), static_cast<int64_t>(fast.size())),
        tolerance);
    const std::vector<float> fast_contiguous = Attend(DefaultBackend(), c, dtype, s, false);
    EXPECT_LT(testing::RelativeError(fast.data(), fast_contiguous.data(),
                                     static_cast<int64_t>(fast.size())),
              dtype == DType::kBF16 && !decode_block ? 1e-2 : 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PagedAttentionTest,
    ::testing::Values(
        PagedCase{8, 2, 128, 128, 1, 1, 16, false, false},
        PagedCase{8, 2, 128, 128, 1, 33, 16, false, false},
        PagedCase{8, 2, 128, 128, 1, 1000, 16, false, false},  // decode, split keys
        PagedCase{8, 2, 128, 128, 1, 1000, 64, true, false},
        PagedCase{8, 2, 128, 128, 7, 200, 48, false, false},  // tiles clipped at page ends
        PagedCase{8, 8, 64, 64, 40, 130, 32, true, false},    // prefill
        PagedCase{32, 8, 128, 128, 1, 4100, 64, false, false},
        PagedCase{16, 1, 576, 512, 1, 700, 64, false, true},  // absorbed MLA latent pages
        PagedCase{16, 1, 576, 512, 3, 257, 16, false, true},
        PagedCase{8, 2, 64, 64, 9, 300, 32, false, false, 50, 0},     // window
        PagedCase{8, 2, 64, 64, 9, 300, 16, true, false, 0, 40},      // chunk
        PagedCase{4, 4, 64, 64, 1, 5000, 256, false, false, 0, 1024}  // chunked split decode
        ),
    [](const ::testing::TestParamInfo<PagedCase>& param_info) { return Name(param_info.param); });

// Chunks counted from chunk_origin: the same as hiding, by padding flags, every key outside the
// query's block (blocks [o + kC, o + (k+1)C)), in the reference and the fast kernel alike.
TEST(ChunkOrigin, BlocksStartAtTheOrigin) {
  const int64_t T = 70, C = 8, D = 64;
  for (const int64_t origin : {0, 3, -2, 13}) {
    SCOPED_TRACE(origin);
    PagedCase c{4, 2, D, D, 1, T, 16, false, false};
    const Stores s = Make(c, DType::kF32);
    for (const int64_t slot : {T - 1, T - 5}) {
      AttentionProblem p;
      p.queries = {s.queries.data(), 1, 4, D};
      p.kv = {DType::kF32, s.keys.data(), s.values.data(), 2, D, D, T * D, D, T * D,
              D,           slot + 1,      s.keep.data()};
      p.visibility = {slot, 0};
      p.visibility.chunk = C;
      p.visibility.chunk_origin = origin;
      p.scale = 0.125f;
      std::vector<float> got(4 * D), fast(4 * D), want(4 * D);
      p.out = got.data();
      ReferenceBackend().attend(p);
      p.out = fast.data();
      DefaultBackend().attend(p);
      // The same problem without a chunk, the keys outside the block hidden by their flags.
      const int64_t block =
          origin +
          ((slot - origin) >= 0 ? (slot - origin) / C : -((origin - slot + C - 1) / C)) * C;
      EXPECT_EQ(ChunkStart(slot, C, origin), block);
      std::vector<uint8_t> keep = s.keep;
      for (int64_t t = 0; t < block; ++t) keep[static_cast<size_t>(t)] = 0;
      p.kv.keep = keep.data();
      p.visibility.chunk = 0;
      p.out = want.data();
      ReferenceBackend().attend(p);
      EXPECT_EQ(got, want);
      EXPECT_LT(testing::RelativeError(fast.data(), want.data(), 4 * D), 1e-5);
    }
  }
}

TEST(PagedAttention, BadPageFieldsAreRefused) {
  const PagedCase c{4, 2, 64, 64, 1, 40, 16, false, false};
  const Stores s = Make(c, DType::kF32);
  AttentionProblem p;
  p.queries = {s.queries.data(), 1, 4, 64};
  p.kv = {DType::kF32,
          s.paged_keys.data(),
          s.paged_values.data(),
          2,
          64,
          64,
          16 * 64,
          64,
          16 * 64,
          64,
          40,
          nullptr};
  std::vector<float> out(4 * 64);
  p.out = out.data();
  p.visibility = {39, 0};
  p.kv.page_size = 16;
  testing::ExpectError([&] { ValidateAttentionProblem(p); }, ErrorKind::kInvalidArgument,
                       {"page table"});
  std::vector<int32_t> table = {0, -1, 2};
  p.kv.page_table = table.data();
  p.kv.key_page_stride = p.kv.value_page_stride = 2 * 16 * 64;
  testing::ExpectError([&] { ValidateAttentionProblem(p); }, ErrorKind::kInvalidArgument,
                       {"page table entry 1 is -1"});
  p.kv.page_size = -4;
  testing::ExpectError([&] { ValidateAttentionProblem(p); }, ErrorKind::kInvalidArgument,
                       {"page size"});
}

}  // namespace
}  // namespace attn
