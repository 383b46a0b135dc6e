// SPDX-License-Identifier: Apache-2.0
// Reading stored K/V elements (f32, f16, bf16) and weight elements as fp32.
#ifndef ATTN_KERNELS_CPU_ELEMENT_LOAD_H_
#define ATTN_KERNELS_CPU_ELEMENT_LOAD_H_

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
    default:
      return;  // ValidateAttentionProblem rejects other dtypes before any load.
  }
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
