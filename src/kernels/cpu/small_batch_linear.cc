// SPDX-License-Identifier: Apache-2.0
// Linear for a few rows (decode): y[r, o] = x[r]·w[o] + b[o]. Reading W from DRAM is the whole
// cost (a decode step reads every weight once and does 2·rows FLOPs per weight), so the kernel is
// built to keep the memory system busy and nothing else in the way:
//   - each weight row is read once for all rows of x (up to kSmallBatchMaxRows per pass);
//   - a block of a few weight rows is walked together, 16 floats at a time, each x vector loaded
//     once (from L1) for the whole block, one independent accumulator per (weight row, x row) so
//     FMA latency never serialises the loop;
//   - the columns are cut into panels whose x rows (packed) stay in L1 for the whole task;
//   - the next block's weights are prefetched into L2 while a block is computed, and each weight
//     row a few lines ahead into L1;
//   - the output rows are cut into about 8 tasks per thread, taken from the pool's shared
//     counter, so a core slowed by another process simply takes fewer of them.
// W may be F32, BF16, F16 or F8_E4M3 with block scales (LinearProblem): the AVX-512 loop widens
// each 16 weights to fp32 in registers as it loads them, so a bf16 step reads half the bytes of an
// fp32 one and an fp8 step a quarter, and nothing is dequantized into memory.
// AVX-512 runs only after ActiveIsa() said so (ATTN_CPU_ISA=reference forces the portable loop).
// It allocates nothing once warm, which keeps decode allocation-free.
#include "kernels/cpu/small_batch_linear.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "attn/kernels.h"
#include "attn/threads.h"
#include "kernels/cpu/dequantize.h"
#include "kernels/cpu/isa.h"

namespace attn::cpu {
namespace avx512 {
void SmallBatchLinearRows(const LinearProblem& p, int64_t first_output, int64_t last_output);
}  // namespace avx512

namespace {

// Tasks per thread: enough for the shared counter to even out a core that runs slower (another
// process on it) without making tasks so short that the hardware prefetchers never ramp up.
constexpr int64_t kTasksPerThread = 8;
// Below this many weight bytes a task costs more to hand out than it saves.
constexpr int64_t kMinTaskBytes = 64 * 1024;
// Task sizes are a multiple of every block height the AVX-512 kernel uses (8, 4, 3), so only the
// last task has a partial block.
constexpr int64_t kTaskGranule = 24;

// Portable C++ (any CPU): one dot product per (output, row), vectorised by the compiler for the
// baseline ISA. A stored weight row other than fp32 is dequantized into a per-thread row first.
void PortableRows(const LinearProblem& p, int64_t first_output, int64_t last_output) {
  thread_local std::vector<float> row;
  for (int64_t o = first_output; o < last_output; ++o) {
    const float* w_row = static_cast<const float*>(p.w) + o * p.in;
    if (p.w_dtype != DType::kF32) {
      if (row.size() < static_cast<size_t>(p.in)) row.resize(static_cast<size_t>(p.in));
      DequantizeWeightRows(p, o, 1, row.data());
      w_row = row.data();
    }
    const float bias = p.bias != nullptr ? p.bias[o] : 0.0f;
    for (int64_t r = 0; r < p.rows; ++r) {
      const float* x_row = p.x + r * p.in;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < p.in; ++i) dot += x_row[i] * w_row[i];
      p.y[r * p.out + o] = dot + bias;
    }
  }
}

}  // namespace

void SmallBatchLinear(const LinearProblem& p) {
  if (p.rows <= 0 || p.out <= 0) return;
  const bool vector = ActiveIsa().isa == Isa::kAvx512;
  const int64_t row_bytes = std::max<int64_t>(p.in, 1) * static_cast<int64_t>(DTypeSize(p.w_dtype));
  int64_t per_task =
      (p.out + NumThreads() * kTasksPerThread - 1) / (NumThreads() * kTasksPerThread);
  per_task = std::max(per_task, (kMinTaskBytes + row_bytes - 1) / row_bytes);
  per_task = (per_task + kTaskGranule - 1) / kTaskGranule * kTaskGranule;
  const int64_t tasks = (p.out + per_task - 1) / per_task;
  // One pointer is all the task function captures: std::function keeps a capture of up to two
  // pointers inline and would allocate for more, and decode must not allocate.
  struct Plan {
    const LinearProblem* p;
    int64_t per_task;
    bool vector;
  };
  const Plan plan{&p, per_task, vector};
  const Plan* shared = &plan;
  ParallelFor(tasks, [shared](int64_t task, int /*thread*/) {
    const LinearProblem& problem = *shared->p;
    const int64_t first = task * shared->per_task;
    const int64_t last = std::min(problem.out, first + shared->per_task);
    if (shared->vector) {
      avx512::SmallBatchLinearRows(problem, first, last);
    } else {
      PortableRows(problem, first, last);
    }
  });
}

}  // namespace attn::cpu

// ---- AVX-512 ---------------------------------------------------------------------------------
// Everything below is compiled for AVX-512 and reached only through SmallBatchLinear's ISA check.
// It uses intrinsics and its own templates only: a standard-library template instantiated here
// could be merged by the linker with the baseline copy the rest of the library uses.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")

namespace attn::cpu::avx512 {
namespace {

// How one weight dtype becomes fp32 vectors: the kernel sees W only through these, so each
// dtype is one struct and no change to the loop. The accumulation stays fp32 whatever the storage.
struct F32Weights {
  using Element = float;
  static constexpr bool kBlockScaled = false;
  static __m512 Load(const float* w) { return _mm512_loadu_ps(w); }
  static __m512 LoadMasked(const float* w, __mmask16 mask) {
    return _mm512_maskz_loadu_ps(mask, w);
  }
};

// bf16 is the top half of an fp32: widen the 16 halves and shift them into place.
struct BF16Weights {
  using Element = uint16_t;
  static constexpr bool kBlockScaled = false;
  static __m512 Widen(__m256i halves) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
  }
  static __m512 Load(const uint16_t* w) {
    return Widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
  }
  static __m512 LoadMasked(const uint16_t* w, __mmask16 mask) {
    return Widen(_mm256_maskz_loadu_epi16(mask, w));
  }
};

struct F16Weights {
  using Element = uint16_t;
  static constexpr bool kBlockScaled = false;
  static __m512 Load(const uint16_t* w) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
  }
  static __m512 LoadMasked(const uint16_t* w, __mmask16 mask) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w));
  }
};

// E4M3's fields moved into binary16 position give a half of value 2^-8 · w (dtype.h,
// F8E4M3ToScaledF16Bits), which the F16C convert widens exactly. Sign-extending each byte and
// shifting it left by 7 puts sign, exponent and mantissa in place with one stray copy of the sign
// in bit 14, which the mask clears: three integer operations per 16 weights. The 2^8 and the
// block scales are folded into x when Rows packs it.
struct F8E4M3Weights {
  using Element = uint8_t;
  static constexpr bool kBlockScaled = true;
  static __m512 Widen(__m128i bytes) {
    const __m256i shifted = _mm256_slli_epi16(_mm256_cvtepi8_epi16(bytes), 7);
    return _mm512_cvtph_ps(
        _mm256_and_si256(shifted, _mm256_set1_epi16(static_cast<short>(0xBFFF))));
  }
  static __m512 Load(const uint8_t* w) {
    return Widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  }
  static __m512 LoadMasked(const uint8_t* w, __mmask16 mask) {
    return Widen(_mm_maskz_loadu_epi8(mask, w));
  }
};

// Horizontal sum of 16 lanes. The zero-masked shuffles are the all-lanes ones: GCC 12's unmasked
// forms start from an "undefined" register that trips -Wuninitialized (GCC bug 105593).
inline float Sum(__m512 v) {
  constexpr __mmask16 kAll = 0xFFFF;
  v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(kAll, v, v, 0x4E));  // 256-bit halves
  v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(kAll, v, v, 0xB1));  // 128-bit quarters
  v = _mm512_add_ps(v, _mm512_maskz_permute_ps(kAll, v, 0x4E));        // pairs of lanes
  v = _mm512_add_ps(v, _mm512_maskz_permute_ps(kAll, v, 0xB1));        // lanes
  return _mm512_cvtss_f32(v);
}

// Columns of one panel: the kR rows of x over a panel take about 32 KiB, so they stay in L1 while
// every weight row of the task streams past them (x rows are read kW·kR times per 16 weights;
// from L2 they would compete with the weights for the L1 miss buffers). A panel of 4 KiB or more
// of each weight row also keeps the hardware prefetchers' 4 KiB-page streams whole.
constexpr int64_t PanelColumns(int rows) { return rows <= 1 ? 8192 : 8192 / rows / 16 * 16; }

// How far ahead in its own row each weight row is prefetched into L1: 8 lines. With many rows
// of x the loop does more work per line, so fewer lines are in flight from the out-of-order
// window alone; measured 5-15 % more weight bandwidth for 4 and 8 rows, neutral for 1.
constexpr int64_t kPrefetchAhead = 128;

// y[r, o + j] (+)= the dot products of weight rows o..o+kW-1 with kR rows of x over columns
// [begin, end): stored with the bias for the first panel, added for the next ones.
// The block that comes after this one is prefetched into L2 meanwhile, so that it never waits
// for DRAM to start its streams: `next_rows` rows from `next`, row stride `in`, at this block's
// columns i < next_end (next_end == begin: nothing to prefetch).
template <class Weights, int kW, int kR>
void Block(const LinearProblem& p, const float* x, int64_t x_stride, float* y, int64_t o,
           int64_t begin, int64_t end, const typename Weights::Element* next, int64_t next_rows,
           int64_t next_end) {
  using Element = typename Weights::Element;
  const int64_t in = p.in;
  const Element* w = reinterpret_cast<const Element*>(p.w) + o * in;
  __m512 acc[kW][kR];
#pragma GCC unroll 8
  for (int j = 0; j < kW; ++j) {
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) acc[j][r] = _mm512_setzero_ps();
  }
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    if (i < next_end) {
      for (int64_t j = 0; j < next_rows; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(next + j * in + i), _MM_HINT_T1);
      }
    }
    if (i + kPrefetchAhead < end) {
#pragma GCC unroll 8
      for (int j = 0; j < kW; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(w + j * in + i + kPrefetchAhead), _MM_HINT_T0);
      }
    }
    __m512 wv[kW];
#pragma GCC unroll 8
    for (int j = 0; j < kW; ++j) wv[j] = Weights::Load(w + j * in + i);
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
      __m512 xv = _mm512_load_ps(x + r * x_stride + (i - begin));
      // One load per x vector, not one per FMA: GCC would fold the load into each of the kW
      // FMAs, which makes the loop load-port bound for many rows.
      asm("" : "+v"(xv));
#pragma GCC unroll 8
      for (int j = 0; j < kW; ++j) acc[j][r] = _mm512_fmadd_ps(wv[j], xv, acc[j][r]);
    }
  }
  if (i < end) {
    // The last (end - begin) % 16 columns: masked loads read nothing past the row (no fault at
    // a page end) and give zeros, which add nothing.
    const __mmask16 mask = static_cast<__mmask16>((1u << (end - i)) - 1u);
    __m512 wv[kW];
#pragma GCC unroll 8
    for (int j = 0; j < kW; ++j) wv[j] = Weights::LoadMasked(w + j * in + i, mask);
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
      const __m512 xv = _mm512_maskz_load_ps(mask, x + r * x_stride + (i - begin));
#pragma GCC unroll 8
      for (int j = 0; j < kW; ++j) acc[j][r] = _mm512_fmadd_ps(wv[j], xv, acc[j][r]);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < kW; ++j) {
    float* y_column = y + o + j;
    if (begin == 0) {
      const float bias = p.bias != nullptr ? p.bias[o + j] : 0.0f;
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) y_column[r * p.out] = Sum(acc[j][r]) + bias;
    } else {
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) y_column[r * p.out] += Sum(acc[j][r]);
    }
  }
}

// Weight rows per block for kR rows of x: as many as the registers hold (kW·kR accumulators, kW
// weight vectors and one x vector <= 32). More rows per block mean fewer x loads per weight;
// 8 for one or two rows keeps 8 or more FMA chains in flight.
template <int kR>
constexpr int WeightRowsPerBlock() {
  return kR <= 2 ? 8 : kR <= 6 ? 4 : 3;
}

// Outputs [first, last) for kR rows of x starting at x, written to y: panel by panel, each panel
// block by block.
template <class Weights, int kR>
void Rows(const LinearProblem& p, const float* x, float* y, int64_t first, int64_t last) {
  using Element = typename Weights::Element;
  constexpr int kW = WeightRowsPerBlock<kR>();
  constexpr int64_t kPanel = PanelColumns(kR);
  const Element* w = reinterpret_cast<const Element*>(p.w);
  // This panel of x, packed: rows at a stride one cache line past the panel width, because rows
  // a multiple of 4 KiB apart (in = 1024, 2048, ...) would all fall into one L1 set and evict
  // each other, and 64-byte aligned for whole-line loads.
  constexpr int64_t kStride = kPanel + 16;
  alignas(64) float packed[kR * kStride];
  // Block-scaled weights: the outputs go in segments that stay within one block row of scales,
  // and x is packed times each column block's scale (and the 2^8 of F8E4M3Weights::Widen), so
  // the loop multiplies raw widened weights and never touches a scale: Σ_i x_i·s_b(i)·q_i.
  const int64_t segment_rows = Weights::kBlockScaled ? p.scale_block_rows : last - first;
  const int64_t scale_cols =
      Weights::kBlockScaled ? (p.in + p.scale_block_cols - 1) / p.scale_block_cols : 0;
  // One pass even when in == 0, so that y still receives the bias.
  for (int64_t begin = 0; begin == 0 || begin < p.in; begin += kPanel) {
    const int64_t end = begin + kPanel < p.in ? begin + kPanel : p.in;
    const int64_t next_begin = end;  // the first block of the next panel follows the last one
    for (int64_t s0 = first; s0 < last || s0 == first;) {
      int64_t s1 = last;
      if constexpr (Weights::kBlockScaled) {
        s1 = (s0 / segment_rows + 1) * segment_rows;
        if (s1 > last) s1 = last;
      }
      for (int r = 0; r < kR; ++r) {
        const float* src = x + r * p.in + begin;
        float* dst = packed + r * kStride;
        if constexpr (Weights::kBlockScaled) {
          // Column block by column block: one scale each, no division per element.
          const float* scales = p.w_scales + s0 / p.scale_block_rows * scale_cols;
          for (int64_t c0 = begin; c0 < end;) {
            const int64_t block = c0 / p.scale_block_cols;
            const int64_t block_end = (block + 1) * p.scale_block_cols;
            const int64_t c1 = block_end < end ? block_end : end;
            const float factor = 256.0f * scales[block];
            for (int64_t c = c0; c < c1; ++c) dst[c - begin] = factor * src[c - begin];
            c0 = c1;
          }
        } else {
          for (int64_t c = 0; c < end - begin; ++c) dst[c] = src[c];
        }
      }
      int64_t o = s0;
      for (; o + kW <= s1; o += kW) {
        // Where the block after this one starts, in this block's column coordinates.
        const Element* next = w;
        int64_t next_end = begin;  // nothing to prefetch
        if (o + 2 * kW <= last) {
          next = w + (o + kW) * p.in;
          next_end = end;
        } else if (next_begin < p.in) {
          next = w + first * p.in + (next_begin - begin);
          next_end = begin + (p.in - next_begin < kPanel ? p.in - next_begin : kPanel);
        }
        Block<Weights, kW, kR>(p, packed, kStride, y, o, begin, end, next, kW, next_end);
      }
      for (; o < s1; ++o) Block<Weights, 1, kR>(p, packed, kStride, y, o, begin, end, w, 0, begin);
      if (s1 == s0) break;  // no outputs at all
      s0 = s1;
    }
    if (p.in == 0) break;
  }
}

template <class Weights>
void RowGroup(const LinearProblem& p, int64_t rows, const float* x, float* y, int64_t first,
              int64_t last) {
  switch (rows) {
    case 1:
      return Rows<Weights, 1>(p, x, y, first, last);
    case 2:
      return Rows<Weights, 2>(p, x, y, first, last);
    case 3:
      return Rows<Weights, 3>(p, x, y, first, last);
    case 4:
      return Rows<Weights, 4>(p, x, y, first, last);
    case 5:
      return Rows<Weights, 5>(p, x, y, first, last);
    case 6:
      return Rows<Weights, 6>(p, x, y, first, last);
    case 7:
      return Rows<Weights, 7>(p, x, y, first, last);
    default:
      return Rows<Weights, 8>(p, x, y, first, last);
  }
}

}  // namespace

void SmallBatchLinearRows(const LinearProblem& p, int64_t first_output, int64_t last_output) {
  // More rows than one pass serves: groups of kSmallBatchMaxRows, each reading W again (from
  // cache if this task's slice of W fits there).
  for (int64_t r = 0; r < p.rows; r += kSmallBatchMaxRows) {
    const int64_t rows = p.rows - r < kSmallBatchMaxRows ? p.rows - r : kSmallBatchMaxRows;
    const float* x = p.x + r * p.in;
    float* y = p.y + r * p.out;
    switch (p.w_dtype) {
      case DType::kBF16:
        RowGroup<BF16Weights>(p, rows, x, y, first_output, last_output);
        break;
      case DType::kF16:
        RowGroup<F16Weights>(p, rows, x, y, first_output, last_output);
        break;
      case DType::kF8E4M3:
        RowGroup<F8E4M3Weights>(p, rows, x, y, first_output, last_output);
        break;
      default:
        RowGroup<F32Weights>(p, rows, x, y, first_output, last_output);
        break;
    }
  }
}

}  // namespace attn::cpu::avx512

#pragma GCC pop_options
