// SPDX-License-Identifier: Apache-2.0
// Element types attn reads and writes, and the scalar conversions between them.
// Compute is always fp32; f16/bf16 exist for storage (files, KV caches).
#ifndef ATTN_DTYPE_H_
#define ATTN_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace attn {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kU8, kBool };

// Size of one element in bytes.
size_t DTypeSize(DType dtype);
// The safetensors spelling: "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL".
const char* DTypeName(DType dtype);
// Parses a safetensors spelling; throws Error(kUnsupported) naming `name` otherwise.
DType DTypeFromName(const std::string& name);
// Parses the CLI/user spelling of a KV-cache dtype: "f32", "f16", "bf16".
DType StorageDTypeFromString(const std::string& name);

// bf16 is the top half of an fp32; conversion from fp32 rounds to nearest even (NaN stays NaN).
inline float BF16ToF32(uint16_t bits) {
  uint32_t word = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}
inline uint16_t F32ToBF16(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  if ((word & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((word >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((word >> 16) & 1u);
  return static_cast<uint16_t>((word + rounding) >> 16);
}
// IEEE binary16 <-> binary32, round to nearest even, with subnormals, inf and NaN.
float F16ToF32(uint16_t bits);
uint16_t F32ToF16(float value);

}  // namespace attn

#endif  // ATTN_DTYPE_H_
