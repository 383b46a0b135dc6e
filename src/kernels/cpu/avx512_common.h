// SPDX-License-Identifier: Apache-2.0
// Building blocks of the AVX-512 attention kernel (flash_attention_avx512.cc): element loads
// that widen f16/bf16 to fp32, 2^x, the row-dot scores of decode blocks and their lane fold,
// the P·V accumulation, the visibility mask of a key tile, soft-capping and ALiBi of a tile's
// scores and the online-softmax update of one row (docs/semantics.md §1 for the math, §4 for
// visibility; docs/architecture.md, "The fast CPU kernels", for how they are put together).
//
// Include this header last: it switches the rest of the including file to AVX-512 code
// generation (`#pragma GCC target`), so that what the standard headers above it define stays
// baseline x86-64 and the linker never picks an AVX-512 copy of a function the rest of the
// library shares. Only files that run after the cpuid check (kernels/cpu/isa.cc) include it.
#ifndef ATTN_KERNELS_CPU_AVX512_COMMON_H_
#define ATTN_KERNELS_CPU_AVX512_COMMON_H_

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")

namespace attn::cpu::avx512 {

constexpr int64_t kTileKeys = 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// How a K/V element is turned into the 32-bit words the kernels consume.
enum class Load {
  kWords,      // f32 as is, or bf16 pairs kept packed for bf16 dot products
  kF16ToF32,   // 16 halves -> 16 floats
  kBF16ToF32,  // 16 bf16 -> 16 floats
  kF8ToF32,    // 16 E4M3 codes -> 16 floats (the code's value; the row scale applies later)
  kI8ToF32,    // 16 int8 codes -> 16 floats (likewise)
};

// Bytes of one stored element read by `load`.
constexpr int64_t LoadBytes(Load load) {
  return load == Load::kWords ? 4 : (load == Load::kF8ToF32 || load == Load::kI8ToF32 ? 1 : 2);
}
// One-byte codes: their tiles are always widened to fp32 first, then scaled per row.
constexpr bool IsByteLoad(Load load) { return LoadBytes(load) == 1; }

// In-register transpose of a 16×16 block of 32-bit words. Stage b swaps the off-diagonal b×b
// sub-blocks of every 2b×2b block (bit b of the row index trades places with bit b of the
// lane index); the four stages together transpose.
// Permutation indices of stage b (b = 8, 4, 2, 1): lane j of the first output takes a[j] or
// c[j-b]; lane j of the second takes a[j+b] or c[j].
struct TransposeIndices {
  alignas(64) int32_t lo[4][16];
  alignas(64) int32_t hi[4][16];
};
// Computed at compile time: a static initialiser here would be AVX-512 code that runs on every
// CPU at load.
constexpr TransposeIndices MakeTransposeIndices() {
  TransposeIndices indices{};
  for (int stage = 0; stage < 4; ++stage) {
    const int b = 8 >> stage;
    for (int j = 0; j < 16; ++j) {
      indices.lo[stage][j] = (j & b) ? 16 + j - b : j;
      indices.hi[stage][j] = (j & b) ? 16 + j : j + b;
    }
  }
  return indices;
}
constexpr TransposeIndices kTransposeIndices = MakeTransposeIndices();

inline void Transpose16(__m512 r[16]) {
  for (int stage = 0; stage < 4; ++stage) {
    const int b = 8 >> stage;
    const __m512i index_lo = _mm512_load_si512(kTransposeIndices.lo[stage]);
    const __m512i index_hi = _mm512_load_si512(kTransposeIndices.hi[stage]);
    for (int i = 0; i < 16; ++i) {
      if (i & b) continue;
      const __m512 a = r[i];
      const __m512 c = r[i + b];
      r[i] = _mm512_permutex2var_ps(a, index_lo, c);
      r[i + b] = _mm512_permutex2var_ps(a, index_hi, c);
    }
  }
}

// 2^x, |relative error| < 2e-7 for x in [-126, 0]: x = n + f, f in [-0.5, 0.5],
// 2^f by its degree-7 Taylor polynomial in f·ln2, then scaled by 2^n exactly.
inline __m512 Exp2(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.5252733804059841e-05f);  // ln2^7/7!
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381610e-04f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __m512 LoadBF16(const uint16_t* src) {
  const __m512i wide =
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline __m512 LoadF16(const uint16_t* src) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
}
// 16 E4M3 codes (as bytes) -> fp32: sign to bit 15 and exponent|mantissa to bits 7…14 make the
// binary16 whose value is 2^-8 times the code's (F8E4M3ToScaledF16Bits, exact for subnormals
// too); convert, then multiply by 2^8 (exact).
inline __m512 WidenF8(__m128i codes) {
  const __m256i wide = _mm256_cvtepu8_epi16(codes);
  const __m256i sign = _mm256_slli_epi16(_mm256_and_si256(wide, _mm256_set1_epi16(0x80)), 8);
  const __m256i rest = _mm256_slli_epi16(_mm256_and_si256(wide, _mm256_set1_epi16(0x7f)), 7);
  return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_or_si256(sign, rest)), _mm512_set1_ps(256.0f));
}
inline __m512 WidenI8(__m128i codes) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes)); }
inline __m512 LoadF8(const uint8_t* src) {
  return WidenF8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
}
inline __m512 LoadI8(const uint8_t* src) {
  return WidenI8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
}

// Sixteen 32-bit words of row `row` (of `rows` valid ones), chunk `chunk`, as one vector. Rows
// are `width` words wide; words past the width read as zeros (head widths that are not a
// multiple of 16 are zero-padded, which leaves dot products and outputs unchanged).
inline __m512 LoadRowChunk(const std::byte* base, int64_t row_stride_bytes, int64_t row,
                           int64_t rows, int64_t chunk, int64_t width, Load load) {
  const int64_t valid = width - chunk * 16;
  if (row >= rows || valid <= 0) return _mm512_setzero_ps();
  const std::byte* p = base + row * row_stride_bytes;
  if (valid >= 16) {
    switch (load) {
      case Load::kWords:
        return _mm512_loadu_ps(reinterpret_cast<const float*>(p) + chunk * 16);
      case Load::kF16ToF32:
        return LoadF16(reinterpret_cast<const uint16_t*>(p) + chunk * 16);
      case Load::kBF16ToF32:
        return LoadBF16(reinterpret_cast<const uint16_t*>(p) + chunk * 16);
      case Load::kF8ToF32:
        return LoadF8(reinterpret_cast<const uint8_t*>(p) + chunk * 16);
      case Load::kI8ToF32:
        return LoadI8(reinterpret_cast<const uint8_t*>(p) + chunk * 16);
    }
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
  switch (load) {
    case Load::kWords:
      return _mm512_maskz_loadu_ps(mask, reinterpret_cast<const float*>(p) + chunk * 16);
    case Load::kF16ToF32:
      return _mm512_cvtph_ps(
          _mm256_maskz_loadu_epi16(mask, reinterpret_cast<const uint16_t*>(p) + chunk * 16));
    case Load::kBF16ToF32: {
      const __m256i raw =
          _mm256_maskz_loadu_epi16(mask, reinterpret_cast<const uint16_t*>(p) + chunk * 16);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    }
    case Load::kF8ToF32:
      return WidenF8(_mm_maskz_loadu_epi8(mask, reinterpret_cast<const uint8_t*>(p) + chunk * 16));
    case Load::kI8ToF32:
      return WidenI8(_mm_maskz_loadu_epi8(mask, reinterpret_cast<const uint8_t*>(p) + chunk * 16));
  }
  return _mm512_setzero_ps();
}

// vt[t][d] = V[t][d] as fp32 for t < n, rows dv_pad wide (zeros past dv).
// Full 16-element chunks widened with the load fixed at compile time (the common case: widths
// that are multiples of 16), the ragged end through LoadRowChunk.
template <Load L>
inline void WidenRows(const std::byte* values, int64_t stride_bytes, int64_t n, int64_t dv,
                      int64_t dv_pad, float* vt) {
  const int64_t full = dv / 16;
  for (int64_t t = 0; t < n; ++t) {
    const std::byte* row = values + t * stride_bytes;
    float* out = vt + t * dv_pad;
    for (int64_t chunk = 0; chunk < full; ++chunk) {
      if constexpr (L == Load::kWords) {
        _mm512_storeu_ps(out + chunk * 16,
                         _mm512_loadu_ps(reinterpret_cast<const float*>(row) + chunk * 16));
      } else if constexpr (L == Load::kF16ToF32) {
        _mm512_storeu_ps(out + chunk * 16,
                         LoadF16(reinterpret_cast<const uint16_t*>(row) + chunk * 16));
      } else if constexpr (L == Load::kF8ToF32) {
        _mm512_storeu_ps(out + chunk * 16,
                         LoadF8(reinterpret_cast<const uint8_t*>(row) + chunk * 16));
      } else if constexpr (L == Load::kI8ToF32) {
        _mm512_storeu_ps(out + chunk * 16,
                         LoadI8(reinterpret_cast<const uint8_t*>(row) + chunk * 16));
      } else {
        _mm512_storeu_ps(out + chunk * 16,
                         LoadBF16(reinterpret_cast<const uint16_t*>(row) + chunk * 16));
      }
    }
    for (int64_t chunk = full; chunk < dv_pad / 16; ++chunk) {
      _mm512_storeu_ps(out + chunk * 16, LoadRowChunk(values, stride_bytes, t, n, chunk, dv, L));
    }
  }
}

inline void ConvertValues(const std::byte* values, int64_t stride_bytes, int64_t n, int64_t dv,
                          int64_t dv_pad, Load load, float* vt) {
  switch (load) {
    case Load::kWords:
      WidenRows<Load::kWords>(values, stride_bytes, n, dv, dv_pad, vt);
      return;
    case Load::kF16ToF32:
      WidenRows<Load::kF16ToF32>(values, stride_bytes, n, dv, dv_pad, vt);
      return;
    case Load::kBF16ToF32:
      WidenRows<Load::kBF16ToF32>(values, stride_bytes, n, dv, dv_pad, vt);
      return;
    case Load::kF8ToF32:
      WidenRows<Load::kF8ToF32>(values, stride_bytes, n, dv, dv_pad, vt);
      return;
    case Load::kI8ToF32:
      WidenRows<Load::kI8ToF32>(values, stride_bytes, n, dv, dv_pad, vt);
      return;
  }
}

// Sixteen values starting at element `offset` of `v` (stored as L) as fp32.
template <Load L>
inline __m512 LoadValues(const void* v, int64_t offset) {
  if constexpr (L == Load::kWords) return _mm512_loadu_ps(static_cast<const float*>(v) + offset);
  if constexpr (L == Load::kF16ToF32) return LoadF16(static_cast<const uint16_t*>(v) + offset);
  if constexpr (L == Load::kBF16ToF32) return LoadBF16(static_cast<const uint16_t*>(v) + offset);
  return _mm512_setzero_ps();
}

// o[r][0..16C) += Σ_t p[r][t] v[t][0..16C) for R rows and n keys; v rows `v_stride` elements
// apart, stored as L; o rows `o_stride` floats apart.
template <int R, int C, Load L>
void AccumulateValues(const float* p, const void* v, int64_t v_stride, int64_t n, float* o,
                      int64_t o_stride) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(o + r * o_stride + c * 16);
  for (int64_t t = 0; t < n; ++t) {
    __m512 vv[C];
    for (int c = 0; c < C; ++c) vv[c] = LoadValues<L>(v, t * v_stride + c * 16);
    for (int r = 0; r < R; ++r) {
      const __m512 pb = _mm512_set1_ps(p[r * kTileKeys + t]);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(pb, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(o + r * o_stride + c * 16, acc[r][c]);
}

using AccumulateFn = void (*)(const float*, const void*, int64_t, int64_t, float*, int64_t);
constexpr int kValueRows = 6;  // 6 rows × 4 vectors = 24 accumulators of 32 registers

template <Load L>
constexpr AccumulateFn kAccumulate[kValueRows][4] = {
    {AccumulateValues<1, 1, L>, AccumulateValues<1, 2, L>, AccumulateValues<1, 3, L>,
     AccumulateValues<1, 4, L>},
    {AccumulateValues<2, 1, L>, AccumulateValues<2, 2, L>, AccumulateValues<2, 3, L>,
     AccumulateValues<2, 4, L>},
    {AccumulateValues<3, 1, L>, AccumulateValues<3, 2, L>, AccumulateValues<3, 3, L>,
     AccumulateValues<3, 4, L>},
    {AccumulateValues<4, 1, L>, AccumulateValues<4, 2, L>, AccumulateValues<4, 3, L>,
     AccumulateValues<4, 4, L>},
    {AccumulateValues<5, 1, L>, AccumulateValues<5, 2, L>, AccumulateValues<5, 3, L>,
     AccumulateValues<5, 4, L>},
    {AccumulateValues<6, 1, L>, AccumulateValues<6, 2, L>, AccumulateValues<6, 3, L>,
     AccumulateValues<6, 4, L>},
};

// Sums the lanes of each of a[0..15]: lane k of the result is Σ_i a[k][i]. Four rounds fold
// pairs of vectors, each halving the lanes a vector spends on one input (8, 4, 2, 1): 15
// shuffle pairs and 15 adds for 16 sums, against 16 full horizontal reductions.
struct FoldIndices {
  alignas(64) int32_t lo[4][16];
  alignas(64) int32_t hi[4][16];
};
// Round with span w (8, 4, 2, 1): output lane j takes, from the first input (j < 8) or the
// second (j >= 8), lane q·2w + u (lo) or q·2w + w + u (hi), where p = j mod 8 = q·w + u.
constexpr FoldIndices MakeFoldIndices() {
  FoldIndices indices{};
  for (int round = 0; round < 4; ++round) {
    const int w = 8 >> round;
    for (int j = 0; j < 16; ++j) {
      const int p = j % 8;
      const int base = (j < 8 ? 0 : 16) + (p / w) * 2 * w + p % w;
      indices.lo[round][j] = base;
      indices.hi[round][j] = base + w;
    }
  }
  return indices;
}
constexpr FoldIndices kFoldIndices = MakeFoldIndices();

inline __m512 SumLanes16(__m512 a[16]) {
  int count = 16;
  for (int round = 0; round < 4; ++round) {
    const __m512i lo = _mm512_load_si512(kFoldIndices.lo[round]);
    const __m512i hi = _mm512_load_si512(kFoldIndices.hi[round]);
    for (int i = 0; i < count / 2; ++i) {
      a[i] = _mm512_add_ps(_mm512_permutex2var_ps(a[2 * i], lo, a[2 * i + 1]),
                           _mm512_permutex2var_ps(a[2 * i], hi, a[2 * i + 1]));
    }
    count /= 2;
  }
  return a[0];
}

// acc[j] += Σ_c q[c] · k_j[c] over CN 16-wide chunks for the 16 rows of a key block (rows past
// `keys` repeat the last real one: finite, and masked by the caller): q's chunks and the 16
// accumulators stay in registers (fixed trip counts, fully unrolled), and the FMAs of 16
// independent keys interleave instead of waiting on one chain.
template <Load L, int CN>
inline void DotChunks(const __m512* qv, const std::byte* key, int64_t stride_bytes, int64_t keys,
                      int64_t chunk0, __m512* acc) {
  constexpr int64_t kElement = L == Load::kWords ? 4 : 2;
  const std::byte* rows[16];
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) {
    rows[j] = key + std::min<int64_t>(j, keys - 1) * stride_bytes + chunk0 * 16 * kElement;
  }
#pragma GCC unroll 8
  for (int c = 0; c < CN; ++c) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j)
      acc[j] = _mm512_fmadd_ps(qv[c], LoadValues<L>(rows[j], c * 16), acc[j]);
  }
}

// s[r][0..n) = Σ_i q[r][i] k[t][i] for `rows` query rows against the n <= 32 keys of a tile,
// without transposing K: each of 16 keys accumulates its own vector over the key width, then
// SumLanes16 turns the 16 vectors into 16 scores. Costs D/16 FMAs per key and row plus ~3
// shuffles per key and row, where the transposed layout (flash_attention_avx512.cc) pays ~32
// shuffles per key once for all rows: the better choice for a few rows (decode). Keys are
// stored as L, `stride_bytes` apart, `width` elements each; q rows are `q_words` floats,
// zero past `width`. Lanes of keys >= n repeat key n-1; callers mask them.
template <Load L>
void ScoresRowDot(const float* q, int64_t rows, int64_t q_words, const std::byte* keys,
                  int64_t stride_bytes, int64_t n, int64_t width, float* s) {
  constexpr int64_t kElement = L == Load::kWords ? 4 : 2;
  const int64_t full = width / 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (width % 16)) - 1u);
  for (int64_t k0 = 0; k0 < n; k0 += 16) {
    const int64_t count = std::min<int64_t>(16, n - k0);
    const std::byte* block = keys + k0 * stride_bytes;
    for (int64_t r = 0; r < rows; ++r) {
      const float* q_row = q + r * q_words;
      __m512 acc[16];
      for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
      // Up to 8 chunks (128 elements) of q in registers per pass over the block's rows.
      for (int64_t c0 = 0; c0 < full; c0 += 8) {
        __m512 qv[8];
        const int64_t chunks = std::min<int64_t>(8, full - c0);
        for (int64_t c = 0; c < chunks; ++c) qv[c] = _mm512_loadu_ps(q_row + (c0 + c) * 16);
        switch (chunks) {
          case 8:
            DotChunks<L, 8>(qv, block, stride_bytes, count, c0, acc);
            break;
          case 7:
            DotChunks<L, 7>(qv, block, stride_bytes, count, c0, acc);
            break;
          case 6:
            DotChunks<L, 6>(qv, block, stride_bytes, count, c0, acc);
            break;
          case 5:
            DotChunks<L, 5>(qv, block, stride_bytes, count, c0, acc);
            break;
          case 4:
            DotChunks<L, 4>(qv, block, stride_bytes, count, c0, acc);
            break;
          case 3:
            DotChunks<L, 3>(qv, block, stride_bytes, count, c0, acc);
            break;
          case 2:
            DotChunks<L, 2>(qv, block, stride_bytes, count, c0, acc);
            break;
          default:
            DotChunks<L, 1>(qv, block, stride_bytes, count, c0, acc);
            break;
        }
      }
      if (tail != 0) {
        const __m512 qv = _mm512_loadu_ps(q_row + full * 16);
        for (int64_t j = 0; j < count; ++j) {
          const std::byte* chunk = block + j * stride_bytes + full * 16 * kElement;
          __m512 kv;
          if constexpr (L == Load::kWords) {
            kv = _mm512_maskz_loadu_ps(tail, chunk);
          } else {
            const __m256i raw = _mm256_maskz_loadu_epi16(tail, chunk);
            kv = L == Load::kF16ToF32
                     ? _mm512_cvtph_ps(raw)
                     : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
          }
          acc[j] = _mm512_fmadd_ps(qv, kv, acc[j]);
        }
      }
      _mm512_storeu_ps(s + r * kTileKeys + k0, SumLanes16(acc));
    }
  }
}

// O[0..16·C) += Σ_t p[t] v[t] for one query row over n values (stored as L, `v_stride`
// elements apart), even and odd keys in separate accumulators: one row gives a single FMA
// chain per output vector, which two sets run at twice the rate of one.
template <int C, Load L>
void AccumulateValuesOneRow(const float* p, const void* v, int64_t v_stride, int64_t n, float* o) {
  __m512 even[C], odd[C];
  for (int c = 0; c < C; ++c) {
    even[c] = _mm512_loadu_ps(o + c * 16);
    odd[c] = _mm512_setzero_ps();
  }
  int64_t t = 0;
  for (; t + 1 < n; t += 2) {
    const __m512 p0 = _mm512_set1_ps(p[t]);
    const __m512 p1 = _mm512_set1_ps(p[t + 1]);
    for (int c = 0; c < C; ++c) {
      even[c] = _mm512_fmadd_ps(p0, LoadValues<L>(v, t * v_stride + c * 16), even[c]);
      odd[c] = _mm512_fmadd_ps(p1, LoadValues<L>(v, (t + 1) * v_stride + c * 16), odd[c]);
    }
  }
  if (t < n) {
    const __m512 p0 = _mm512_set1_ps(p[t]);
    for (int c = 0; c < C; ++c) {
      even[c] = _mm512_fmadd_ps(p0, LoadValues<L>(v, t * v_stride + c * 16), even[c]);
    }
  }
  for (int c = 0; c < C; ++c) _mm512_storeu_ps(o + c * 16, _mm512_add_ps(even[c], odd[c]));
}

// s[0..31] holds one row's raw scores for a key tile, `mask` its visible keys. Turns them into
// Logit soft-capping of one row's 32 scores in place (docs/semantics.md §1, Gemma 2): with
// u = s·score_scale (the score times log2 e), u ← C·tanh(u / C) for C = cap·log2 e, which is
// the natural-units c·tanh(score / c) times log2 e. tanh(|x|) = (1 − e)/(1 + e) with
// e = 2^(−2|x|·log2 e) ∈ (0, 1], so Exp2 never overflows; the sign is put back. The caller
// then hands SoftmaxTileRow a score_scale of 1.
inline void SoftCapTileRow(float* s, __m512 score_scale, float cap_log2) {
  const __m512 inverse_cap = _mm512_set1_ps(1.0f / cap_log2);
  const __m512 cap = _mm512_set1_ps(cap_log2);
  const __m512 minus_two_log2e = _mm512_set1_ps(-2.0f * kLog2e);
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 sign_bit = _mm512_set1_ps(-0.0f);
  for (int half = 0; half < 2; ++half) {
    const __m512 x =
        _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(s + 16 * half), score_scale), inverse_cap);
    const __m512 magnitude = _mm512_andnot_ps(sign_bit, x);
    const __m512 e = Exp2(_mm512_mul_ps(magnitude, minus_two_log2e));
    const __m512 t = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
    const __m512 signed_t = _mm512_or_ps(t, _mm512_and_ps(sign_bit, x));
    _mm512_storeu_ps(s + 16 * half, _mm512_mul_ps(signed_t, cap));
  }
}

// ALiBi on one row's 32 scores in place (docs/semantics.md §1): s[i] ← s[i]·score_scale +
// slope_log2 · (distance + i), where distance = t0 − slot is the first key's distance from the
// query and slope_log2 = m_h · log2 e puts the natural-units bias m_h·(t − p) in the base-2 units
// of the scores. distance + i is an exact float for |t − p| < 2^24. The caller then hands
// SoftmaxTileRow a score_scale of 1.
inline void AlibiTileRow(float* s, __m512 score_scale, float slope_log2, float distance) {
  const __m512 slope = _mm512_set1_ps(slope_log2);
  const __m512 base =
      _mm512_add_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                    _mm512_set1_ps(distance));
  for (int half = 0; half < 2; ++half) {
    const __m512 offsets = _mm512_add_ps(base, _mm512_set1_ps(16.0f * static_cast<float>(half)));
    const __m512 scaled = _mm512_mul_ps(_mm512_loadu_ps(s + 16 * half), score_scale);
    _mm512_storeu_ps(s + 16 * half, _mm512_fmadd_ps(slope, offsets, scaled));
  }
}

// P = 2^(s·score_scale - m') (zero where hidden) in place, with m' = max(m, visible scores), and
// rescales the row's running sum l and output accumulator o (dv_pad floats) by 2^(m - m'):
// the online softmax of FlashAttention in base 2 (equal to softmax over all keys, docs/semantics.md
// §1 and §4).
inline void SoftmaxTileRow(float* s, uint32_t mask, __m512 score_scale, float& m, float& l,
                           float* o, int64_t dv_pad) {
  if (mask == 0) {
    _mm512_storeu_ps(s, _mm512_setzero_ps());
    _mm512_storeu_ps(s + 16, _mm512_setzero_ps());
    return;
  }
  const __mmask16 m0 = static_cast<__mmask16>(mask & 0xffffu);
  const __mmask16 m1 = static_cast<__mmask16>(mask >> 16);
  const __m512 s0 = _mm512_mul_ps(_mm512_loadu_ps(s), score_scale);
  const __m512 s1 = _mm512_mul_ps(_mm512_loadu_ps(s + 16), score_scale);
  const __m512 neg_inf = _mm512_set1_ps(kNegInf);
  const float tile_max = _mm512_reduce_max_ps(
      _mm512_max_ps(_mm512_mask_mov_ps(neg_inf, m0, s0), _mm512_mask_mov_ps(neg_inf, m1, s1)));
  const float m_new = std::max(m, tile_max);
  const __m512 shift = _mm512_set1_ps(m_new);
  const __m512 p0 = _mm512_maskz_mov_ps(m0, Exp2(_mm512_sub_ps(s0, shift)));
  const __m512 p1 = _mm512_maskz_mov_ps(m1, Exp2(_mm512_sub_ps(s1, shift)));
  _mm512_storeu_ps(s, p0);
  _mm512_storeu_ps(s + 16, p1);
  const float correction = std::exp2(m - m_new);  // 0 when m was -inf
  if (correction != 1.0f) {
    const __m512 c = _mm512_set1_ps(correction);
    for (int64_t d = 0; d < dv_pad; d += 16) {
      _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), c));
    }
  }
  l = l * correction + _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
  m = m_new;
}

template <typename T>
inline T* Grow(std::vector<T>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<size_t>(size));
  return buffer.data();
}

// The lowest key slot a causal query at `slot` may see: 0, raised by a sliding window
// (slot − window + 1) and by chunked attention to the start of the query's block of `chunk`
// slots (docs/semantics.md §1). Keys below it are never read.
inline int64_t LowestVisibleKey(int64_t slot, const Visibility& visibility) {
  int64_t lowest = 0;
  if (visibility.window > 0) lowest = std::max<int64_t>(lowest, slot - visibility.window + 1);
  if (visibility.chunk > 0) {
    lowest = std::max<int64_t>(lowest, ChunkStart(slot, visibility.chunk, visibility.chunk_origin));
  }
  return lowest;
}

// Bit t of the result is set iff key t0 + t is visible to the query at `slot` (causal:
// lowest <= t0 + t <= slot, `lowest` from LowestVisibleKey; key_bits: the tile's kept keys).
// Without `causal` every kept key is visible (window and chunk need causal;
// ValidateAttentionProblem).
inline uint32_t RowMask(int64_t slot, int64_t lowest, int64_t t0, bool causal, uint32_t key_bits) {
  if (!causal) return key_bits;
  const int64_t last = slot - t0;  // highest visible offset
  if (last < 0) return 0;
  uint32_t mask = last >= 31 ? ~0u : ((2u << last) - 1u);
  const int64_t first = lowest - t0;  // lowest visible offset
  if (first >= 32) return 0;
  if (first > 0) mask &= ~((1u << first) - 1u);
  return mask & key_bits;
}

// Bits 0 … n-1 for the tile's keys t0 … t0+n-1, cleared where keep[t] == 0 (padding).
inline uint32_t TileKeyBits(const uint8_t* keep, int64_t t0, int64_t n) {
  uint32_t bits = n == 32 ? ~0u : ((1u << n) - 1u);
  if (keep != nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      if (keep[t0 + i] == 0) bits &= ~(1u << i);
    }
  }
  return bits;
}

// O[r] += Σ_t P[r][t] V[t] for `rows` rows (P: rows × 32 in `p`, O: rows × dv_pad in `o`) over
// the n values of one tile, stored as `load` `stride_bytes` apart. With few rows each value is
// read once, so f16/bf16 widen on the fly; with more rows (or a width that is not a multiple
// of 16, or fp8/int8 codes) the tile is widened once into `vt` (32 × dv_pad) and reread as fp32.
// Quantized values' scales are already folded into P by the caller.
inline void AccumulateTile(const float* p, int64_t rows, const std::byte* v_tile,
                           int64_t stride_bytes, int64_t n, int64_t dv, int64_t dv_pad, Load load,
                           float* vt, float* o) {
  const void* v = v_tile;
  int64_t v_stride = stride_bytes / LoadBytes(load);
  if (dv != dv_pad || IsByteLoad(load) || (load != Load::kWords && rows > kValueRows)) {
    ConvertValues(v_tile, stride_bytes, n, dv, dv_pad, load, vt);
    v = vt;
    v_stride = dv_pad;
    load = Load::kWords;
  }
  const int64_t v_element = load == Load::kWords ? 4 : 2;
  if (rows == 1) {
    using OneRowFn = void (*)(const float*, const void*, int64_t, int64_t, float*);
    constexpr OneRowFn kWords[8] = {
        AccumulateValuesOneRow<1, Load::kWords>, AccumulateValuesOneRow<2, Load::kWords>,
        AccumulateValuesOneRow<3, Load::kWords>, AccumulateValuesOneRow<4, Load::kWords>,
        AccumulateValuesOneRow<5, Load::kWords>, AccumulateValuesOneRow<6, Load::kWords>,
        AccumulateValuesOneRow<7, Load::kWords>, AccumulateValuesOneRow<8, Load::kWords>};
    constexpr OneRowFn kHalves[8] = {
        AccumulateValuesOneRow<1, Load::kF16ToF32>, AccumulateValuesOneRow<2, Load::kF16ToF32>,
        AccumulateValuesOneRow<3, Load::kF16ToF32>, AccumulateValuesOneRow<4, Load::kF16ToF32>,
        AccumulateValuesOneRow<5, Load::kF16ToF32>, AccumulateValuesOneRow<6, Load::kF16ToF32>,
        AccumulateValuesOneRow<7, Load::kF16ToF32>, AccumulateValuesOneRow<8, Load::kF16ToF32>};
    constexpr OneRowFn kBrain[8] = {
        AccumulateValuesOneRow<1, Load::kBF16ToF32>, AccumulateValuesOneRow<2, Load::kBF16ToF32>,
        AccumulateValuesOneRow<3, Load::kBF16ToF32>, AccumulateValuesOneRow<4, Load::kBF16ToF32>,
        AccumulateValuesOneRow<5, Load::kBF16ToF32>, AccumulateValuesOneRow<6, Load::kBF16ToF32>,
        AccumulateValuesOneRow<7, Load::kBF16ToF32>, AccumulateValuesOneRow<8, Load::kBF16ToF32>};
    const OneRowFn* one_row = load == Load::kWords      ? kWords
                              : load == Load::kF16ToF32 ? kHalves
                                                        : kBrain;
    for (int64_t d0 = 0; d0 < dv_pad; d0 += 128) {
      const int64_t vectors = std::min<int64_t>(8, (dv_pad - d0) / 16);
      one_row[vectors - 1](p, static_cast<const std::byte*>(v) + d0 * v_element, v_stride, n,
                           o + d0);
    }
    return;
  }
  const auto& accumulate = load == Load::kWords      ? kAccumulate<Load::kWords>
                           : load == Load::kF16ToF32 ? kAccumulate<Load::kF16ToF32>
                                                     : kAccumulate<Load::kBF16ToF32>;
  for (int64_t d0 = 0; d0 < dv_pad; d0 += 64) {
    const int64_t vectors = std::min<int64_t>(4, (dv_pad - d0) / 16);
    const void* v_chunk = static_cast<const std::byte*>(v) + d0 * v_element;
    for (int64_t r0 = 0; r0 < rows; r0 += kValueRows) {
      const int64_t count = std::min<int64_t>(kValueRows, rows - r0);
      accumulate[count - 1][vectors - 1](p + r0 * kTileKeys, v_chunk, v_stride, n,
                                         o + r0 * dv_pad + d0, dv_pad);
    }
  }
}

}  // namespace attn::cpu::avx512

#endif  // ATTN_KERNELS_CPU_AVX512_COMMON_H_
