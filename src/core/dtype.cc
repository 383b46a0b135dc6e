// SPDX-License-Identifier: Apache-2.0
#include "attn/dtype.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "attn/error.h"

namespace attn {
namespace {

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},   {DType::kBF16, "BF16", 2},
    {DType::kF64, "F64", 8}, {DType::kI64, "I64", 8},   {DType::kI32, "I32", 4},
    {DType::kU8, "U8", 1},   {DType::kBool, "BOOL", 1}, {DType::kF8E4M3, "F8_E4M3", 1},
    {DType::kI8, "I8", 1},
};

const DTypeEntry& Lookup(DType dtype) {
  for (const DTypeEntry& entry : kDTypes) {
    if (entry.dtype == dtype) return entry;
  }
  // Only reachable through a value cast from an out-of-range integer.
  throw Error(ErrorKind::kInvalidArgument,
              "invalid DType value " + std::to_string(static_cast<int>(dtype)));
}

uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

float BitsToFloat(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// Shifts `value` right by `shift` bits (1..31), rounding to nearest with ties to even.
uint32_t ShiftRightRoundEven(uint32_t value, int shift) {
  const uint32_t half = 1u << (shift - 1);
  const uint32_t remainder = value & ((1u << shift) - 1u);
  uint32_t result = value >> shift;
  if (remainder > half || (remainder == half && (result & 1u) != 0)) ++result;
  return result;
}

constexpr uint32_t kF32AbsMask = 0x7fffffffu;
constexpr uint32_t kF32Inf = 0x7f800000u;
// Magnitudes at or above 65520 (halfway between the largest half, 65504, and 2^16) round to
// inf: the tie goes up because 65504's mantissa is odd.
constexpr uint32_t kF32HalfOverflow = 0x477ff000u;
// 2^-14, the smallest normal half.
constexpr uint32_t kF32HalfMinNormal = 0x38800000u;
// 2^-25, half of the smallest subnormal half; at or below it the result rounds to zero.
constexpr uint32_t kF32HalfUnderflow = 0x33000000u;
// Exponent bias difference between binary32 (127) and binary16 (15).
constexpr uint32_t kBiasDelta = 127 - 15;

}  // namespace

size_t DTypeSize(DType dtype) { return Lookup(dtype).size; }

const char* DTypeName(DType dtype) { return Lookup(dtype).name; }

DType DTypeFromName(const std::string& name) {
  for (const DTypeEntry& entry : kDTypes) {
    // I8 names KV-cache codes only: files holding I8 tensors stay unsupported.
    if (entry.dtype != DType::kI8 && name == entry.name) return entry.dtype;
  }
  throw Error(ErrorKind::kUnsupported, "unsupported dtype '" + name +
                                           "' (supported: F32, F16, BF16, F64, I64, I32, U8, "
                                           "BOOL, F8_E4M3)");
}

DType StorageDTypeFromString(const std::string& name, bool allow_quantized) {
  if (name == "f32") return DType::kF32;
  if (name == "f16") return DType::kF16;
  if (name == "bf16") return DType::kBF16;
  if (allow_quantized && name == "fp8") return DType::kF8E4M3;
  if (allow_quantized && name == "int8") return DType::kI8;
  if (!allow_quantized && (name == "fp8" || name == "int8")) {
    throw Error(ErrorKind::kInvalidArgument, "storage dtype '" + name +
                                                 "' is for paged caches only (valid here: f32, "
                                                 "f16, bf16)");
  }
  throw Error(ErrorKind::kInvalidArgument, "invalid storage dtype '" + name +
                                               "' (valid: f32, f16, bf16" +
                                               (allow_quantized ? ", fp8, int8)" : ")"));
}

DType WeightDTypeFromString(const std::string& name, bool allow_fp8) {
  if (name == "fp8" && allow_fp8) return DType::kF8E4M3;
  if (name == "f32") return DType::kF32;
  if (name == "f16") return DType::kF16;
  if (name == "bf16") return DType::kBF16;
  throw Error(ErrorKind::kInvalidArgument,
              "invalid dtype '" + name + "' (valid: f32, f16, bf16" + (allow_fp8 ? ", fp8)" : ")"));
}

float F16ToF32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1f) return BitsToFloat(sign | kF32Inf | (mantissa << 13));
  if (exponent != 0) return BitsToFloat(sign | ((exponent + kBiasDelta) << 23) | (mantissa << 13));
  if (mantissa == 0) return BitsToFloat(sign);
  // Subnormal half: every one is a normal float, so shift the leading one into the implicit bit.
  uint32_t f32_exponent = kBiasDelta + 1;
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --f32_exponent;
  }
  return BitsToFloat(sign | (f32_exponent << 23) | ((mantissa & 0x3ffu) << 13));
}

uint16_t F32ToF16(float value) {
  const uint32_t bits = FloatBits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & kF32AbsMask;
  if (magnitude > kF32Inf) {
    // Keep the top payload bits and force the quiet bit so the NaN cannot become an inf.
    return static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  }
  if (magnitude >= kF32HalfOverflow) return static_cast<uint16_t>(sign | 0x7c00u);
  if (magnitude >= kF32HalfMinNormal) {
    // Rebias the exponent in place; a rounding carry out of the mantissa correctly bumps it.
    const uint32_t rebiased = magnitude - (kBiasDelta << 23);
    return static_cast<uint16_t>(sign | ShiftRightRoundEven(rebiased, 13));
  }
  if (magnitude <= kF32HalfUnderflow) return sign;
  // Subnormal result: units of 2^-24. The float is m * 2^(e - 150) with the implicit bit in m,
  // so the half mantissa is m >> (126 - e); rounding up to 0x400 yields the smallest normal.
  const uint32_t exponent = magnitude >> 23;
  const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
  return static_cast<uint16_t>(sign |
                               ShiftRightRoundEven(mantissa, static_cast<int>(126 - exponent)));
}

float F8E4M3ToF32(uint8_t bits) {
  const float sign = (bits & 0x80u) != 0 ? -1.0f : 1.0f;
  const int exponent = (bits >> 3) & 0xf;
  const int mantissa = bits & 0x7;
  if (exponent == 0xf && mantissa == 0x7) return std::numeric_limits<float>::quiet_NaN();
  // Subnormals (exponent 0) are mantissa · 2^-9; normals (1 + mantissa/8) · 2^(exponent - 7).
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -9);
  return sign * std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
}

uint8_t F32ToF8E4M3(float value) {
  constexpr uint8_t kNan = 0x7f;
  const uint32_t bits = FloatBits(value);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t magnitude = bits & kF32AbsMask;
  if (magnitude > kF32Inf) return static_cast<uint8_t>(sign | kNan);
  // 464 = 0x43e80000: halfway between 448 (the largest E4M3) and 480 (the next binade step);
  // the tie rounds to 448, whose mantissa (110) is even.
  if (magnitude > 0x43e80000u) return static_cast<uint8_t>(sign | kNan);
  constexpr uint32_t kMinNormal = 121u << 23;  // 2^-6
  if (magnitude >= kMinNormal) {
    // Rebias the exponent (127 -> 7) in place; a carry out of the 3-bit mantissa bumps it.
    const uint32_t rebiased = magnitude - ((127u - 7u) << 23);
    return static_cast<uint8_t>(sign | ShiftRightRoundEven(rebiased, 20));
  }
  // Subnormal result in units of 2^-9: the float is m · 2^(e - 150), so the code is
  // m >> (141 - e); below 2^-10 (e < 117) it rounds to zero.
  const uint32_t exponent = magnitude >> 23;
  if (exponent < 117) return sign;
  const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
  return static_cast<uint8_t>(sign |
                              ShiftRightRoundEven(mantissa, static_cast<int>(141 - exponent)));
}

}  // namespace attn
