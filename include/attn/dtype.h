// SPDX-License-Identifier: Apache-2.0
// Element types attn reads and writes, and the scalar conversions between them.
// Compute is always fp32; f16/bf16 exist for storage (files, KV caches, weights) and F8_E4M3
// for weights stored as DeepSeek's fp8 checkpoints do (with block scales; docs/semantics.md §9).
#ifndef ATTN_DTYPE_H_
#define ATTN_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace attn {

// kI8: signed 8-bit codes with per-row scales, for quantized paged KV caches only ("I8").
enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kU8, kBool, kF8E4M3, kI8 };

// Size of one element in bytes.
size_t DTypeSize(DType dtype);
// The safetensors spelling: "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3",
// "I8".
const char* DTypeName(DType dtype);
// Parses a safetensors spelling (not I8, which only KV caches use); throws Error(kUnsupported)
// naming `name` otherwise.
DType DTypeFromName(const std::string& name);
// Parses the CLI/user spelling of a KV-cache dtype: "f32", "f16", "bf16"; and, where
// `allow_quantized` (paged caches only), "fp8" (F8_E4M3) and "int8" (I8) with per-token scales.
DType StorageDTypeFromString(const std::string& name, bool allow_quantized = false);
// True for the KV storage dtypes that carry per-token scales: F8_E4M3 and I8.
inline bool IsQuantizedKV(DType dtype) { return dtype == DType::kF8E4M3 || dtype == DType::kI8; }
// The CLI/user spelling of a weight or activation dtype: "f32", "f16", "bf16"; and "fp8" for
// F8_E4M3 where `allow_fp8`.
DType WeightDTypeFromString(const std::string& name, bool allow_fp8 = false);

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

// OCP 8-bit E4M3 ("fn": finite, no infinities) <-> binary32: 1 sign, 4 exponent bits (bias 7),
// 3 mantissa bits; 0x7f/0xff are NaN, the largest magnitude is 448, the smallest subnormal 2^-9.
// From fp32: round to nearest even; a magnitude above 464 (halfway to the next step) or a NaN
// gives NaN, as PyTorch's float8_e4m3fn cast does (callers scale values into range first).
float F8E4M3ToF32(uint8_t bits);
uint8_t F32ToF8E4M3(float value);
// The 16 bits of the binary16 whose value is 2^-8 times the E4M3 value: the E4M3 fields shifted
// into binary16 position (exact, subnormals included; NaN codes give 480·2^-8). Lets SIMD code
// widen fp8 through a binary16 convert instruction and fold the 2^8 into its scale.
inline uint16_t F8E4M3ToScaledF16Bits(uint8_t bits) {
  return static_cast<uint16_t>(((bits & 0x80u) << 8) | ((bits & 0x7fu) << 7));
}

}  // namespace attn

#endif  // ATTN_DTYPE_H_
