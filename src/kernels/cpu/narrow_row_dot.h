// SPDX-License-Identifier: Apache-2.0
// fp8 (E4M3), int8, bf16 and f16 K/V tiles of the AVX-512 attention kernel's row-dot (decode)
// items, scored and accumulated in fp32 straight from the stored elements ("codes" below): each
// 32-element chunk of a key or value row is widened in registers once and used there by every
// query row of the item, instead of being widened into an fp32 copy of the tile and read back
// (docs/architecture.md, "The fast CPU kernels"; the fp8/int8 storage, one fp32 scale per token
// and kv head, in "Paged caches").
//
// Widening 32 codes (WidenCodes):
//   - E4M3: the sign-extended code shifted left by 7 and masked with 0xbf80 is the binary16 whose
//     value is 2^-8 times the code's (sign to bit 15, the 4 exponent and 3 mantissa bits to bits
//     13…7; subnormal codes become binary16 subnormals, still exact), and vcvtph2ps makes it
//     fp32: 8 instructions. The 2^8 goes back into Q and into P (CodeUnit), exactly.
//   - int8: sign-extended to 32 bits and converted, 4 instructions; exact integers.
//   - bf16: zero-extended to 32 bits and shifted into the upper half; f16: vcvtph2ps. Exact.
// Products and sums are those of the widened-tile path (avx512_common.h ConvertValues +
// ScoresRowDot / AccumulateTile), summed in another order: results agree with it, and with the
// reference kernel, to fp32 rounding.
//
// Why not vdpbf16ps on bf16 pairs of the codes (half the instructions per multiply-add): on the
// Xeon this was measured on, vdpbf16ps issues once per 2 cycles and occupies both FMA ports
// (0.61 ns against 0.15 ns for an fp32 FMA; 8 vdpbf16ps and 16 FMAs take the sum of their
// times), so its 32 products cost as much as 64 by FMAs, and it would round Q and P to bf16.
//
// Include this header last (after avx512_common.h, which it includes): it is AVX-512 code.
#ifndef ATTN_KERNELS_CPU_NARROW_ROW_DOT_H_
#define ATTN_KERNELS_CPU_NARROW_ROW_DOT_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/avx512_common.h"

namespace attn::cpu::avx512 {

// What a widened code is worth in units of the code: Q (scores) and P (values) are multiplied
// by it so that the products carry the code's own value.
constexpr float CodeUnit(Load load) { return load == Load::kF8ToF32 ? 256.0f : 1.0f; }

// Bytes per stored element.
template <Load L>
constexpr int64_t kCodeBytes = L == Load::kBF16ToF32 || L == Load::kF16ToF32 ? 2 : 1;

// Elements `mask` selects of the 32 at src (the rest read as zero), as a vector of codes.
template <Load L>
inline auto LoadCodesMasked(const std::byte* src, __mmask32 mask) {
  if constexpr (kCodeBytes<L> == 2) {
    return _mm512_maskz_loadu_epi16(mask, src);
  } else {
    return _mm256_maskz_loadu_epi8(mask, src);
  }
}

// 32 codes (L: kF8ToF32, kI8ToF32; kBF16ToF32, kF16ToF32 in a 512-bit vector) -> fp32,
// elements 0…15 in lo and 16…31 in hi, each the code's value divided by CodeUnit(L).
template <Load L>
inline void WidenCodes(__m512i codes, __m512& lo, __m512& hi) {
  static_assert(kCodeBytes<L> == 2);
  if constexpr (L == Load::kBF16ToF32) {
    lo = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(codes)), 16));
    hi = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(codes, 1)), 16));
  } else {
    lo = _mm512_cvtph_ps(_mm512_castsi512_si256(codes));
    hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(codes, 1));
  }
}
template <Load L>
inline void WidenCodes(__m256i codes, __m512& lo, __m512& hi) {
  static_assert(kCodeBytes<L> == 1);
  if constexpr (L == Load::kF8ToF32) {
    const __m512i halves = _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(codes), 7),
                                            _mm512_set1_epi16(static_cast<int16_t>(0xbf80)));
    lo = _mm512_cvtph_ps(_mm512_castsi512_si256(halves));
    hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(halves, 1));
  } else {
    lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(codes)));
    hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(codes, 1)));
  }
}

// The same from memory: 32 codes at src (int8 sign-extends each half straight from memory).
template <Load L>
inline void WidenCodesAt(const std::byte* src, __m512& lo, __m512& hi) {
  if constexpr (kCodeBytes<L> == 2) {
    WidenCodes<L>(_mm512_loadu_si512(src), lo, hi);
  } else if constexpr (L == Load::kF8ToF32) {
    WidenCodes<L>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)), lo, hi);
  } else {
    lo = _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
    hi = _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16))));
  }
}

// One round of SumLanes16's fold (avx512_common.h) on a pair of vectors.
inline __m512 FoldPair(__m512 a, __m512 b, int round) {
  const __m512i lo = _mm512_load_si512(kFoldIndices.lo[round]);
  const __m512i hi = _mm512_load_si512(kFoldIndices.hi[round]);
  return _mm512_add_ps(_mm512_permutex2var_ps(a, lo, b), _mm512_permutex2var_ps(a, hi, b));
}

// SumLanes16 with every loop bound fixed, so that the 16 accumulators stay in registers (the
// array form is kept in memory and zeroed with rep stos for every block of keys: a third of the
// time of a block of 2 keys × 8 rows, measured).
inline __m512 FoldLanes16(const __m512* a) {
  __m512 b[8], c[4];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) b[i] = FoldPair(a[2 * i], a[2 * i + 1], 0);
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) c[i] = FoldPair(b[2 * i], b[2 * i + 1], 1);
  return FoldPair(FoldPair(c[0], c[1], 2), FoldPair(c[2], c[3], 2), 3);
}

// s[r][0..n) = Σ_i q[r][i] · k[t][i] / CodeUnit(L) for R query rows (fp32, `q_words` apart,
// zero past `width` up to a multiple of 16) against n ≤ 32 keys stored as codes `stride_bytes`
// apart. Blocks of 16 / R keys: every chunk of every key is widened once and multiplied into all
// R rows, and the R × 16/R accumulators are folded together into one vector of scores. Lanes of
// keys ≥ n are not written.
template <Load L, int R>
void ScoresCodesRowDot(const float* q, int64_t q_words, const std::byte* keys, int64_t stride_bytes,
                       int64_t n, int64_t width, float* s) {
  constexpr int kKeys = 16 / R;
  const int64_t full = width / 32;
  const int64_t tail = width % 32;
  const __mmask32 tail_mask = static_cast<__mmask32>((1u << tail) - 1u);
  for (int64_t k0 = 0; k0 < n; k0 += kKeys) {
    const std::byte* key[kKeys];
#pragma GCC unroll 16
    for (int j = 0; j < kKeys; ++j) key[j] = keys + std::min<int64_t>(k0 + j, n - 1) * stride_bytes;
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
    // Chunk c of every key of the block. kPart: 2 = all 32 elements, 1 = a ragged last chunk of
    // at most 16 (q holds no second half there), 3 = a ragged last chunk of more than 16.
    auto chunk = [&]<int kPart>(int64_t c) {
#pragma GCC unroll 16
      for (int j = 0; j < kKeys; ++j) {
        __m512 lo, hi;
        if constexpr (kPart == 2) {
          WidenCodesAt<L>(key[j] + c * 32 * kCodeBytes<L>, lo, hi);
        } else {
          WidenCodes<L>(LoadCodesMasked<L>(key[j] + c * 32 * kCodeBytes<L>, tail_mask), lo, hi);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const float* q_chunk = q + r * q_words + c * 32;
          acc[r * kKeys + j] = _mm512_fmadd_ps(_mm512_loadu_ps(q_chunk), lo, acc[r * kKeys + j]);
          if constexpr (kPart != 1) {
            acc[r * kKeys + j] =
                _mm512_fmadd_ps(_mm512_loadu_ps(q_chunk + 16), hi, acc[r * kKeys + j]);
          }
        }
      }
    };
    for (int64_t c = 0; c < full; ++c) chunk.template operator()<2>(c);
    if (tail > 16) {
      chunk.template operator()<3>(full);
    } else if (tail > 0) {
      chunk.template operator()<1>(full);
    }
    // Lane r·kKeys + j is row r's score of key k0 + j: a masked store from a base shifted back by
    // r·kKeys puts row r's lanes at s[r][k0…].
    const __m512 sums = FoldLanes16(acc);
    const int64_t real = std::min<int64_t>(kKeys, n - k0);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __mmask16 lanes = static_cast<__mmask16>(((1u << real) - 1u) << (r * kKeys));
      _mm512_mask_storeu_ps(s + r * kTileKeys + k0 - r * kKeys, lanes, sums);
    }
  }
}

// The scores of a tile for `rows` (1…8) query rows: `first_keys` keys from `keys`, then (a tile
// spanning two pages) the rest from `rest`, written at their offsets in each row of s (rows × 32).
template <Load L>
void ScoreCodesTile(const float* q, int64_t rows, int64_t q_words, const std::byte* keys,
                    const std::byte* rest, int64_t stride_bytes, int64_t first_keys, int64_t n,
                    int64_t width, float* s) {
  using Fn = void (*)(const float*, int64_t, const std::byte*, int64_t, int64_t, int64_t, float*);
  constexpr Fn kFns[8] = {ScoresCodesRowDot<L, 1>, ScoresCodesRowDot<L, 2>, ScoresCodesRowDot<L, 3>,
                          ScoresCodesRowDot<L, 4>, ScoresCodesRowDot<L, 5>, ScoresCodesRowDot<L, 6>,
                          ScoresCodesRowDot<L, 7>, ScoresCodesRowDot<L, 8>};
  const Fn fn = kFns[rows - 1];
  fn(q, q_words, keys, stride_bytes, first_keys, width, s);
  if (first_keys < n) fn(q, q_words, rest, stride_bytes, n - first_keys, width, s + first_keys);
}

// scales[0..32) *= factor.
inline void MultiplyTileScales(float* scales, float factor) {
  const __m512 f = _mm512_set1_ps(factor);
  _mm512_storeu_ps(scales, _mm512_mul_ps(_mm512_loadu_ps(scales), f));
  _mm512_storeu_ps(scales + 16, _mm512_mul_ps(_mm512_loadu_ps(scales + 16), f));
}

// o[r][0..16·C) += Σ_t p[r][t] · v[t][0..16·C) / CodeUnit(L) for R rows over n values stored as
// codes `stride_bytes` apart; p rows kTileKeys apart, o rows `o_stride` floats apart. C is even
// (32 codes a chunk) and R·C ≤ 16: the accumulators stay in registers, and each chunk of each
// value row is widened once for all R rows.
template <Load L, int R, int C>
void AccumulateCodes(const float* p, const std::byte* v, int64_t stride_bytes, int64_t n, float* o,
                     int64_t o_stride) {
  static_assert(C % 2 == 0 && R * C <= 16);
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(o + r * o_stride + c * 16);
  }
  for (int64_t t = 0; t < n; ++t) {
    const std::byte* row = v + t * stride_bytes;
#pragma GCC unroll 4
    for (int b = 0; b < C / 2; ++b) {
      __m512 lo, hi;
      WidenCodesAt<L>(row + b * 32 * kCodeBytes<L>, lo, hi);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 weight = _mm512_set1_ps(p[r * kTileKeys + t]);
        acc[r][2 * b] = _mm512_fmadd_ps(weight, lo, acc[r][2 * b]);
        acc[r][2 * b + 1] = _mm512_fmadd_ps(weight, hi, acc[r][2 * b + 1]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(o + r * o_stride + c * 16, acc[r][c]);
  }
}

// O += P V for a tile: P (rows × 32, value scales and CodeUnit(L) folded in, zero past the
// tile's keys), `first_keys` values from `values` and the rest from `rest` (the tile's second
// page); dv a multiple of 32, O rows dv_pad floats apart. Rows go in groups that keep at most 16
// accumulators: 1–2 rows over 128 elements at a time, 3–4 over 64, 5–8 over 32.
template <Load L>
void AccumulateCodesTile(const float* p, int64_t rows, const std::byte* values,
                         const std::byte* rest, int64_t stride_bytes, int64_t first_keys, int64_t n,
                         int64_t dv, int64_t dv_pad, float* o) {
  using Fn = void (*)(const float*, const std::byte*, int64_t, int64_t, float*, int64_t);
  // [rows − 1][0, 1, 2 for C = 2, 4, 8], R·C ≤ 16.
  constexpr Fn kFns[8][3] = {
      {AccumulateCodes<L, 1, 2>, AccumulateCodes<L, 1, 4>, AccumulateCodes<L, 1, 8>},
      {AccumulateCodes<L, 2, 2>, AccumulateCodes<L, 2, 4>, AccumulateCodes<L, 2, 8>},
      {AccumulateCodes<L, 3, 2>, AccumulateCodes<L, 3, 4>, AccumulateCodes<L, 3, 4>},
      {AccumulateCodes<L, 4, 2>, AccumulateCodes<L, 4, 4>, AccumulateCodes<L, 4, 4>},
      {AccumulateCodes<L, 5, 2>, AccumulateCodes<L, 5, 2>, AccumulateCodes<L, 5, 2>},
      {AccumulateCodes<L, 6, 2>, AccumulateCodes<L, 6, 2>, AccumulateCodes<L, 6, 2>},
      {AccumulateCodes<L, 7, 2>, AccumulateCodes<L, 7, 2>, AccumulateCodes<L, 7, 2>},
      {AccumulateCodes<L, 8, 2>, AccumulateCodes<L, 8, 2>, AccumulateCodes<L, 8, 2>},
  };
  const int64_t widest = rows <= 2 ? 2 : rows <= 4 ? 1 : 0;  // index of the largest C
  for (int64_t segment = 0; segment < (first_keys < n ? 2 : 1); ++segment) {
    const std::byte* base = segment == 0 ? values : rest;
    const int64_t count = segment == 0 ? first_keys : n - first_keys;
    const float* weights = p + (segment == 0 ? 0 : first_keys);
    for (int64_t d0 = 0; d0 < dv;) {
      const int64_t remaining = dv - d0;
      const int64_t index = std::min<int64_t>(widest, remaining >= 128  ? 2
                                                      : remaining >= 64 ? 1
                                                                        : 0);
      kFns[rows - 1][index](weights, base + d0 * kCodeBytes<L>, stride_bytes, count, o + d0,
                            dv_pad);
      d0 += int64_t{32} << index;
    }
  }
}

// The instances for a tile's stored type (kF8ToF32, kI8ToF32, kBF16ToF32 or kF16ToF32).
using ScoreCodesTileFn = void (*)(const float*, int64_t, int64_t, const std::byte*,
                                  const std::byte*, int64_t, int64_t, int64_t, int64_t, float*);
inline ScoreCodesTileFn ScoreCodesTileFor(Load load) {
  switch (load) {
    case Load::kF8ToF32:
      return ScoreCodesTile<Load::kF8ToF32>;
    case Load::kI8ToF32:
      return ScoreCodesTile<Load::kI8ToF32>;
    case Load::kBF16ToF32:
      return ScoreCodesTile<Load::kBF16ToF32>;
    default:
      return ScoreCodesTile<Load::kF16ToF32>;
  }
}
using AccumulateCodesTileFn = void (*)(const float*, int64_t, const std::byte*, const std::byte*,
                                       int64_t, int64_t, int64_t, int64_t, int64_t, float*);
inline AccumulateCodesTileFn AccumulateCodesTileFor(Load load) {
  switch (load) {
    case Load::kF8ToF32:
      return AccumulateCodesTile<Load::kF8ToF32>;
    case Load::kI8ToF32:
      return AccumulateCodesTile<Load::kI8ToF32>;
    case Load::kBF16ToF32:
      return AccumulateCodesTile<Load::kBF16ToF32>;
    default:
      return AccumulateCodesTile<Load::kF16ToF32>;
  }
}

}  // namespace attn::cpu::avx512

#endif  // ATTN_KERNELS_CPU_NARROW_ROW_DOT_H_
