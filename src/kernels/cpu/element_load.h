// SPDX-License-Identifier: Apache-2.0
// Reading stored K/V elements (f32, f16, bf16; fp8/int8 codes before their scale) and weight
// elements as fp32, and quantizing a K/V row to fp8/int8 codes with one scale.
#ifndef ATTN_KERNELS_CPU_ELEMENT_LOAD_H_
#define ATTN_KERNELS_CPU_ELEMENT_LOAD_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "attn/dtype.h"

namespace attn::cpu {

// Converts `count` elements starting at element `offset` of `base` (stored as `dtype`) to fp32.
inline void LoadRow(DType dtype, const void* base, int64_t offset, int64_t count, float* out) {
  switch (dtype) {
    case DType::kF32: {
      std::memcpy(out, static_cast<const float*>(base) + offset,
                  static_cast<size_t>(count) * sizeof(float));
      return;
    }
    case DType::kBF16: {
      const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
      for (int64_t i = 0; i < count; ++i) out[i] = BF16ToF32(src[i]);
      return;
    }
    case DType::kF16: {
      const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
      for (int64_t i = 0; i < count; ++i) out[i] = F16ToF32(src[i]);
      return;
    }
    case DType::kF8E4M3: {
      const uint8_t* src = static_cast<const uint8_t*>(base) + offset;
      for (int64_t i = 0; i < count; ++i) out[i] = F8E4M3ToF32(src[i]);
      return;
    }
    case DType::kI8: {
      const int8_t* src = static_cast<const int8_t*>(base) + offset;
      for (int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(src[i]);
      return;
    }
    default:
      return;  // ValidateAttentionProblem rejects other dtypes before any load.
  }
}

// The largest code magnitude of a quantized K/V dtype: 448 (E4M3) or 127 (int8).
inline float QuantizedKVMax(DType dtype) { return dtype == DType::kF8E4M3 ? 448.0f : 127.0f; }

// Stores `count` fp32 values as F8_E4M3 or I8 codes at element `offset` of `base` and returns
// their scale: scale = max|x| / 448 (fp8) or max|x| / 127 (int8, symmetric, rounded to nearest
// and clamped to ±127), 1 for an all-zero row; x[i] ≈ code[i] · scale.
inline float QuantizeRow(DType dtype, void* base, int64_t offset, int64_t count, const float* in) {
  float largest = 0.0f;
  for (int64_t i = 0; i < count; ++i) largest = std::max(largest, std::fabs(in[i]));
  const float limit = QuantizedKVMax(dtype);
  const float scale = largest > 0.0f ? largest / limit : 1.0f;
  const float inverse = 1.0f / scale;
  if (dtype == DType::kF8E4M3) {
    uint8_t* dst = static_cast<uint8_t*>(base) + offset;
    for (int64_t i = 0; i < count; ++i) {
      dst[i] = F32ToF8E4M3(std::clamp(in[i] * inverse, -limit, limit));
    }
  } else {
    int8_t* dst = static_cast<int8_t*>(base) + offset;
    for (int64_t i = 0; i < count; ++i) {
      dst[i] = static_cast<int8_t>(std::clamp(std::nearbyint(in[i] * inverse), -limit, limit));
    }
  }
  return scale;
}

// Element `index` of a stored weight (F32, BF16, F16, F8_E4M3) as fp32, before any block scale:
// the scalar conversions of dtype.h, shared by the reference linear kernel and the portable
// dequantizer.
inline float StoredWeightValue(DType dtype, const void* base, int64_t index) {
  switch (dtype) {
    case DType::kBF16:
      return BF16ToF32(static_cast<const uint16_t*>(base)[index]);
    case DType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(base)[index]);
    case DType::kF8E4M3:
      return F8E4M3ToF32(static_cast<const uint8_t*>(base)[index]);
    default:
      return static_cast<const float*>(base)[index];
  }
}

// Converts `count` fp32 values to `dtype` and stores them at element `offset` of `base`.
inline void StoreRow(DType dtype, void* base, int64_t offset, int64_t count, const float* in) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(static_cast<float*>(base) + offset, in,
                  static_cast<size_t>(count) * sizeof(float));
      return;
    case DType::kBF16: {
      uint16_t* dst = static_cast<uint16_t*>(base) + offset;
      for (int64_t i = 0; i < count; ++i) dst[i] = F32ToBF16(in[i]);
      return;
    }
    case DType::kF16: {
      uint16_t* dst = static_cast<uint16_t*>(base) + offset;
      for (int64_t i = 0; i < count; ++i) dst[i] = F32ToF16(in[i]);
      return;
    }
    default:
      return;  // caches only hold storage dtypes, checked at creation.
  }
}

}  // namespace attn::cpu

#endif  // ATTN_KERNELS_CPU_ELEMENT_LOAD_H_
