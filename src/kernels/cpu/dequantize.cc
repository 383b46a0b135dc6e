// SPDX-License-Identifier: Apache-2.0
// Dequantizing stored weight rows (dequantize.h). The AVX-512 loops widen 16 weights per step
// exactly as the small-batch kernel does (small_batch_linear.cc), so a tile holds the same fp32
// values the decode path multiplies with; the portable loops are the plain twins.
#include "kernels/cpu/dequantize.h"

#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "attn/dtype.h"
#include "kernels/cpu/element_load.h"
#include "kernels/cpu/isa.h"

namespace attn::cpu {
namespace avx512 {
void DequantizeRows(const LinearProblem& p, int64_t first, int64_t count, float* out);
void DequantizeRowsBF16(const LinearProblem& p, int64_t first, int64_t count, uint16_t* out);
void RoundToBF16(const float* x, int64_t count, uint16_t* out);
}  // namespace avx512

namespace {

void PortableRows(const LinearProblem& p, int64_t first, int64_t count, float* out) {
  const int64_t scale_cols =
      p.w_scales != nullptr ? (p.in + p.scale_block_cols - 1) / p.scale_block_cols : 0;
  for (int64_t r = 0; r < count; ++r) {
    const int64_t o = first + r;
    for (int64_t i = 0; i < p.in; ++i) {
      float value = StoredWeightValue(p.w_dtype, p.w, o * p.in + i);
      if (p.w_scales != nullptr) {
        value *= p.w_scales[o / p.scale_block_rows * scale_cols + i / p.scale_block_cols];
      }
      out[r * p.in + i] = value;
    }
  }
}

bool VectorPath(const LinearProblem&) { return ActiveIsa().isa == Isa::kAvx512; }

}  // namespace

void DequantizeWeightRows(const LinearProblem& p, int64_t first, int64_t count, float* out) {
  if (VectorPath(p)) {
    avx512::DequantizeRows(p, first, count, out);
  } else {
    PortableRows(p, first, count, out);
  }
}

void DequantizeWeightRowsBF16(const LinearProblem& p, int64_t first, int64_t count, uint16_t* out) {
  if (VectorPath(p)) {
    avx512::DequantizeRowsBF16(p, first, count, out);
    return;
  }
  thread_local std::vector<float> row;
  if (row.size() < static_cast<size_t>(p.in)) row.resize(static_cast<size_t>(p.in));
  for (int64_t r = 0; r < count; ++r) {
    PortableRows(p, first + r, 1, row.data());
    for (int64_t i = 0; i < p.in; ++i) out[r * p.in + i] = F32ToBF16(row[static_cast<size_t>(i)]);
  }
}

void RoundToBF16(const float* x, int64_t count, uint16_t* out) {
  if (ActiveIsa().isa == Isa::kAvx512) {
    avx512::RoundToBF16(x, count, out);
    return;
  }
  for (int64_t i = 0; i < count; ++i) out[i] = F32ToBF16(x[i]);
}

}  // namespace attn::cpu

// ---- AVX-512 ---------------------------------------------------------------------------------
// Reached only through the ISA checks above; intrinsics and local code only (see
// small_batch_linear.cc on why no standard-library template is instantiated here).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")

namespace attn::cpu::avx512 {
namespace {

// 16 stored weights at element `index` (mask: the valid lanes) as fp32, before any block scale;
// fp8 comes out 2^-8 too small (F8E4M3ToScaledF16Bits), which the caller's scale folds back.
inline __m512 Load16(DType dtype, const void* w, int64_t index, __mmask16 mask) {
  switch (dtype) {
    case DType::kBF16: {
      const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(w) + index);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case DType::kF16:
      return _mm512_cvtph_ps(
          _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(w) + index));
    case DType::kF8E4M3: {
      // Sign-extend, shift into binary16 position, clear the stray sign copy in bit 14
      // (small_batch_linear.cc, F8E4M3Weights).
      const __m256i wide =
          _mm256_cvtepi8_epi16(_mm_maskz_loadu_epi8(mask, static_cast<const uint8_t*>(w) + index));
      const __m256i bits = _mm256_and_si256(_mm256_slli_epi16(wide, 7),
                                            _mm256_set1_epi16(static_cast<short>(0xBFFF)));
      return _mm512_cvtph_ps(bits);
    }
    default:
      return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(w) + index);
  }
}

// fp32 -> bf16, nearest even (finite inputs): add 0x7fff plus the lowest kept bit, keep the top.
inline __m256i ToBF16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

// Calls store(row, i, mask, values) for each 16 columns of each row, values dequantized; a
// scaled weight is walked block column by block column, one scale per block.
template <class Store>
inline void ForEachChunk(const LinearProblem& p, int64_t first, int64_t count, Store store) {
  const bool scaled = p.w_scales != nullptr;
  const int64_t block = scaled ? p.scale_block_cols : p.in;
  const int64_t scale_cols = scaled ? (p.in + block - 1) / block : 0;
  for (int64_t r = 0; r < count; ++r) {
    const int64_t o = first + r;
    const float* scale_row = scaled ? p.w_scales + o / p.scale_block_rows * scale_cols : nullptr;
    for (int64_t b0 = 0, column = 0; b0 < p.in; b0 += block, ++column) {
      const int64_t b1 = p.in - b0 < block ? p.in : b0 + block;
      const __m512 scale = _mm512_set1_ps(scaled ? 256.0f * scale_row[column] : 1.0f);
      for (int64_t i = b0; i < b1; i += 16) {
        const __mmask16 mask = b1 - i >= 16 ? static_cast<__mmask16>(0xFFFF)
                                            : static_cast<__mmask16>((1u << (b1 - i)) - 1u);
        __m512 v = Load16(p.w_dtype, p.w, o * p.in + i, mask);
        if (scaled) v = _mm512_mul_ps(v, scale);
        store(r, i, mask, v);
      }
    }
  }
}

}  // namespace

void DequantizeRows(const LinearProblem& p, int64_t first, int64_t count, float* out) {
  ForEachChunk(p, first, count, [&](int64_t r, int64_t i, __mmask16 mask, __m512 v) {
    _mm512_mask_storeu_ps(out + r * p.in + i, mask, v);
  });
}

void DequantizeRowsBF16(const LinearProblem& p, int64_t first, int64_t count, uint16_t* out) {
  ForEachChunk(p, first, count, [&](int64_t r, int64_t i, __mmask16 mask, __m512 v) {
    _mm256_mask_storeu_epi16(out + r * p.in + i, mask, ToBF16(v));
  });
}

void RoundToBF16(const float* x, int64_t count, uint16_t* out) {
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 mask = count - i >= 16 ? static_cast<__mmask16>(0xFFFF)
                                           : static_cast<__mmask16>((1u << (count - i)) - 1u);
    _mm256_mask_storeu_epi16(out + i, mask, ToBF16(_mm512_maskz_loadu_ps(mask, x + i)));
  }
}

}  // namespace attn::cpu::avx512

#pragma GCC pop_options
