// SPDX-License-Identifier: Apache-2.0
#include "attn/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "attn/error.h"
#include "attn/tensor.h"
#include "test_util.h"

namespace attn {
namespace {

float FromBits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

uint32_t ToBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

using testing::ExpectError;

TEST(DTypeTest, SizesAndNames) {
  const struct {
    DType dtype;
    const char* name;
    size_t size;
  } cases[] = {{DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},  {DType::kBF16, "BF16", 2},
               {DType::kF64, "F64", 8}, {DType::kI64, "I64", 8},  {DType::kI32, "I32", 4},
               {DType::kU8, "U8", 1},   {DType::kBool, "BOOL", 1}};
  for (const auto& c : cases) {
    EXPECT_EQ(DTypeSize(c.dtype), c.size) << c.name;
    EXPECT_STREQ(DTypeName(c.dtype), c.name);
    EXPECT_EQ(DTypeFromName(c.name), c.dtype) << c.name;
  }
}

TEST(DTypeTest, UnknownNameIsUnsupported) {
  ExpectError([] { DTypeFromName("F8_E5M2"); }, ErrorKind::kUnsupported, {"F8_E5M2"});
  // Spellings are case-sensitive, as in the safetensors format.
  ExpectError([] { DTypeFromName("f32"); }, ErrorKind::kUnsupported, {"'f32'"});
}

// E4M3 against values read off the OCP 8-bit floating point spec (v1.0, table 2): the extremes,
// one, and the first subnormal; then every code's round trip and the binary16 bit trick.
TEST(DTypeTest, F8E4M3Decoding) {
  EXPECT_EQ(DTypeFromName("F8_E4M3"), DType::kF8E4M3);
  EXPECT_EQ(DTypeSize(DType::kF8E4M3), 1u);
  EXPECT_EQ(F8E4M3ToF32(0x00), 0.0f);
  EXPECT_EQ(F8E4M3ToF32(0x01), 0x1p-9f);      // smallest subnormal
  EXPECT_EQ(F8E4M3ToF32(0x07), 7 * 0x1p-9f);  // largest subnormal
  EXPECT_EQ(F8E4M3ToF32(0x08), 0x1p-6f);      // smallest normal
  EXPECT_EQ(F8E4M3ToF32(0x38), 1.0f);
  EXPECT_EQ(F8E4M3ToF32(0xb8), -1.0f);
  EXPECT_EQ(F8E4M3ToF32(0x7e), 448.0f);  // largest finite
  EXPECT_EQ(F8E4M3ToF32(0xfe), -448.0f);
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0x7f)));
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0xff)));
  for (int code = 0; code < 256; ++code) {
    const uint8_t bits = static_cast<uint8_t>(code);
    if ((bits & 0x7f) == 0x7f) continue;
    const float value = F8E4M3ToF32(bits);
    EXPECT_EQ(F32ToF8E4M3(value), bits) << code;
    EXPECT_EQ(256.0f * F16ToF32(F8E4M3ToScaledF16Bits(bits)), value) << code;
  }
}

// Rounding to nearest even between neighbours, NaN above the top of the range (as PyTorch's
// float8_e4m3fn cast), signed zero for the tiniest values.
TEST(DTypeTest, F8E4M3Rounding) {
  for (int code = 0; code < 0x7e; ++code) {
    const float low = F8E4M3ToF32(static_cast<uint8_t>(code));
    const float high = F8E4M3ToF32(static_cast<uint8_t>(code + 1));
    const float middle = 0.5f * (low + high);
    const int even = (code % 2 == 0) ? code : code + 1;
    EXPECT_EQ(F32ToF8E4M3(middle), even) << code;
    EXPECT_EQ(F32ToF8E4M3(std::nextafter(middle, 0.0f)), code) << code;
    EXPECT_EQ(F32ToF8E4M3(std::nextafter(middle, 1000.0f)), code + 1) << code;
  }
  EXPECT_EQ(F32ToF8E4M3(464.0f), 0x7e);
  EXPECT_EQ(F32ToF8E4M3(std::nextafter(464.0f, 1000.0f)), 0x7f);
  EXPECT_EQ(F32ToF8E4M3(-1e9f), 0xff);
  EXPECT_EQ(F32ToF8E4M3(std::numeric_limits<float>::quiet_NaN()) & 0x7f, 0x7f);
  EXPECT_EQ(F32ToF8E4M3(0x1p-11f), 0x00);
  EXPECT_EQ(F32ToF8E4M3(-0x1p-11f), 0x80);
}

TEST(DTypeTest, StorageDTypeFromString) {
  EXPECT_EQ(StorageDTypeFromString("f32"), DType::kF32);
  EXPECT_EQ(StorageDTypeFromString("f16"), DType::kF16);
  EXPECT_EQ(StorageDTypeFromString("bf16"), DType::kBF16);
  ExpectError([] { StorageDTypeFromString("fp16"); }, ErrorKind::kInvalidArgument,
              {"'fp16'", "f32", "f16", "bf16"});
  ExpectError([] { StorageDTypeFromString("F32"); }, ErrorKind::kInvalidArgument, {"'F32'"});
}

TEST(F16Test, KnownBitPatterns) {
  const struct {
    float value;
    uint16_t bits;
  } cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3c00},
      {-2.5f, 0xc100},
      {0.5f, 0x3800},
      {65504.0f, 0x7bff},                  // largest finite half
      {std::ldexp(1.0f, -14), 0x0400},     // smallest normal
      {std::ldexp(1.0f, -24), 0x0001},     // smallest subnormal
      {std::ldexp(1023.0f, -24), 0x03ff},  // largest subnormal
      {-std::ldexp(1.0f, -24), 0x8001},
      {std::numeric_limits<float>::infinity(), 0x7c00},
      {-std::numeric_limits<float>::infinity(), 0xfc00},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(F32ToF16(c.value), c.bits) << c.value;
    EXPECT_EQ(ToBits(F16ToF32(c.bits)), ToBits(c.value)) << std::hex << c.bits;
  }
}

TEST(F16Test, NaNStaysNaN) {
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7c01)));  // signalling NaN must not read as inf
  EXPECT_TRUE(std::isnan(F16ToF32(0xfe00)));
  const uint16_t quiet = F32ToF16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(quiet & 0x7c00, 0x7c00);
  EXPECT_NE(quiet & 0x03ff, 0);
  // A NaN whose payload sits only in the low 13 bits would become inf if merely truncated.
  const uint16_t low_payload = F32ToF16(FromBits(0x7f800001u));
  EXPECT_EQ(low_payload & 0x7c00, 0x7c00);
  EXPECT_NE(low_payload & 0x03ff, 0);
  EXPECT_EQ(F32ToF16(FromBits(0xffc00000u)) & 0x8000, 0x8000);
}

TEST(F16Test, RoundsTiesToEven) {
  const float ulp = std::ldexp(1.0f, -10);          // half spacing in [1, 2)
  EXPECT_EQ(F32ToF16(1.0f + ulp / 2), 0x3c00);      // tie, 0x3c00 is even
  EXPECT_EQ(F32ToF16(1.0f + 3 * ulp / 2), 0x3c02);  // tie, 0x3c02 is even
  EXPECT_EQ(F32ToF16(std::nextafter(1.0f + ulp / 2, 2.0f)), 0x3c01);
  EXPECT_EQ(F32ToF16(std::nextafter(1.0f + 3 * ulp / 2, 0.0f)), 0x3c01);
  EXPECT_EQ(F32ToF16(-(1.0f + ulp / 2)), 0xbc00);
  // Rounding up out of the mantissa carries into the exponent: 2 - ulp/4 -> 2.0.
  EXPECT_EQ(F32ToF16(std::nextafter(2.0f, 0.0f)), 0x4000);
}

TEST(F16Test, OverflowAndUnderflow) {
  EXPECT_EQ(F32ToF16(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);  // tie between 65504 (odd) and 2^16 -> inf
  EXPECT_EQ(F32ToF16(1e6f), 0x7c00);
  EXPECT_EQ(F32ToF16(-1e6f), 0xfc00);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24 -> 0
  EXPECT_EQ(F32ToF16(-std::ldexp(1.0f, -25)), 0x8000);
  EXPECT_EQ(F32ToF16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(F32ToF16(std::ldexp(3.0f, -25)), 0x0002);  // tie between 1 and 2 -> 2
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(F32ToF16(1e-45f), 0x0000);                    // float subnormal
  EXPECT_EQ(F32ToF16(std::ldexp(2047.0f, -25)), 0x0400);  // tie 0x3ff/0x400 -> normal 0x400
}

TEST(F16Test, EveryHalfRoundTrips) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const uint16_t half = static_cast<uint16_t>(bits);
    const float value = F16ToF32(half);
    if ((half & 0x7c00) == 0x7c00 && (half & 0x03ff) != 0) {
      EXPECT_TRUE(std::isnan(value)) << std::hex << bits;
      continue;
    }
    ASSERT_EQ(F32ToF16(value), half) << std::hex << bits;
  }
}

// Every midpoint between neighbouring finite halves is exact in fp32, so this checks the
// rounding rule over the whole range, subnormals included.
TEST(F16Test, EveryMidpointRoundsToEven) {
  for (uint16_t low = 0; low < 0x7bff; ++low) {
    const uint16_t high = static_cast<uint16_t>(low + 1);
    const float middle = (F16ToF32(low) + F16ToF32(high)) / 2;
    const uint16_t even = (low & 1) == 0 ? low : high;
    ASSERT_EQ(F32ToF16(middle), even) << std::hex << low;
    ASSERT_EQ(F32ToF16(std::nextafter(middle, 0.0f)), low) << std::hex << low;
    ASSERT_EQ(F32ToF16(std::nextafter(middle, 1e9f)), high) << std::hex << low;
  }
}

TEST(BF16Test, KnownBitPatterns) {
  EXPECT_EQ(F32ToBF16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBF16(-2.5f), 0xc020);
  EXPECT_EQ(BF16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(BF16ToF32(0xc020), -2.5f);
  EXPECT_EQ(F32ToBF16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(F32ToBF16(FromBits(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(F32ToBF16(FromBits(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(F32ToBF16(FromBits(0x3f808001u)), 0x3f81);
  EXPECT_EQ(F32ToBF16(FromBits(0x7f7fffffu)), 0x7f80);  // FLT_MAX rounds to inf
  EXPECT_TRUE(std::isnan(BF16ToF32(F32ToBF16(FromBits(0x7f800001u)))));
}

TEST(TensorTest, NumElementsAndShapeToString) {
  EXPECT_EQ(NumElements({}), 1);
  EXPECT_EQ(NumElements({2, 3, 4}), 24);
  EXPECT_EQ(NumElements({5, 0}), 0);
  EXPECT_EQ(ShapeToString({2, 3, 4}), "[2, 3, 4]");
  EXPECT_EQ(ShapeToString({}), "[]");
  ExpectError([] { NumElements({2, -1}); }, ErrorKind::kInvalidArgument, {"[2, -1]"});
  ExpectError(
      [] {
        NumElements({int64_t{1} << 32, int64_t{1} << 32});
      },
      ErrorKind::kInvalidArgument, {"overflow"});
}

TEST(TensorTest, ConstructionAndCheckShape) {
  Tensor zeros({2, 3});
  EXPECT_EQ(zeros.size(), 6);
  for (float v : zeros.values()) EXPECT_EQ(v, 0.0f);
  Tensor filled({2}, {1.5f, -2.0f});
  EXPECT_EQ(filled.values()[1], -2.0f);
  Tensor copy = filled.Copy();
  EXPECT_EQ(copy.shape(), (Shape{2}));
  EXPECT_EQ(copy.values()[0], 1.5f);
  ExpectError([] { Tensor({2, 2}, {1.0f}); }, ErrorKind::kInvalidArgument, {"[2, 2]", "4", "1"});
  CheckShape(filled, {2}, "q");
  ExpectError(
      [&] {
        CheckShape(zeros, {3, 2}, "query");
      },
      ErrorKind::kInvalidArgument, {"query: expected shape [3, 2], got [2, 3]"});
}

}  // namespace
}  // namespace attn
