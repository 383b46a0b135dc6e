// The PNG writer against the format itself: signature, chunk CRCs, the IHDR fields, and that
// the stored deflate blocks and Adler-32 give back exactly the pixels that were drawn.
#include "cli/png_plot.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace attn::cli {
namespace {

uint32_t ReadU32(const std::vector<uint8_t>& b, size_t at) {
  return (uint32_t{b[at]} << 24) | (uint32_t{b[at + 1]} << 16) | (uint32_t{b[at + 2]} << 8) |
         uint32_t{b[at + 3]};
}

// Bitwise CRC-32 (ISO 3309), independent of the writer's table-driven one.
uint32_t SlowCrc(const uint8_t* data, size_t n) {
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= data[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

TEST(PngTest, DecodesBackToThePixels) {
  PlotPanel panel{"T", "X", "Y", true, false, {{"A", {1, 10, 100}, {3, 2, 1}}}};
  const Image image = RenderLinePlots("TITLE 123", {panel, panel});
  ASSERT_GT(image.width, 0);
  const std::vector<uint8_t> png = EncodePng(image);
  const uint8_t signature[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  ASSERT_TRUE(std::equal(signature, signature + 8, png.begin()));

  std::vector<uint8_t> zlib;
  std::vector<std::string> types;
  size_t at = 8;
  while (at < png.size()) {
    const uint32_t length = ReadU32(png, at);
    const std::string type(png.begin() + static_cast<long>(at) + 4,
                           png.begin() + static_cast<long>(at) + 8);
    types.push_back(type);
    EXPECT_EQ(ReadU32(png, at + 8 + length), SlowCrc(png.data() + at + 4, length + 4)) << type;
    if (type == "IHDR") {
      EXPECT_EQ(ReadU32(png, at + 8), static_cast<uint32_t>(image.width));
      EXPECT_EQ(ReadU32(png, at + 12), static_cast<uint32_t>(image.height));
      EXPECT_EQ(png[at + 16], 8);  // bit depth
      EXPECT_EQ(png[at + 17], 2);  // RGB
    }
    if (type == "IDAT")
      zlib.insert(zlib.end(), png.begin() + static_cast<long>(at) + 8,
                  png.begin() + static_cast<long>(at) + 8 + length);
    at += 12 + length;
  }
  EXPECT_EQ(types, (std::vector<std::string>{"IHDR", "IDAT", "IEND"}));

  // Inflate stored blocks: [BFINAL|BTYPE=00][LEN][NLEN][bytes].
  ASSERT_EQ(zlib[0], 0x78);
  std::vector<uint8_t> raw;
  size_t z = 2;
  bool final = false;
  while (!final) {
    final = (zlib[z] & 1) != 0;
    ASSERT_EQ(zlib[z] & 6, 0) << "not a stored block";
    const size_t len = zlib[z + 1] | (size_t{zlib[z + 2]} << 8);
    const size_t nlen = zlib[z + 3] | (size_t{zlib[z + 4]} << 8);
    ASSERT_EQ(len ^ 0xffff, nlen);
    raw.insert(raw.end(), zlib.begin() + static_cast<long>(z) + 5,
               zlib.begin() + static_cast<long>(z + 5 + len));
    z += 5 + len;
  }
  uint32_t a = 1, b = 0;
  for (uint8_t byte : raw) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  EXPECT_EQ(ReadU32(zlib, z), (b << 16) | a);

  const size_t stride = static_cast<size_t>(image.width) * 3;
  ASSERT_EQ(raw.size(), (stride + 1) * static_cast<size_t>(image.height));
  bool any_ink = false;
  for (int y = 0; y < image.height; ++y) {
    ASSERT_EQ(raw[static_cast<size_t>(y) * (stride + 1)], 0) << "filter byte of row " << y;
    for (size_t x = 0; x < stride; ++x) {
      const uint8_t pixel = raw[static_cast<size_t>(y) * (stride + 1) + 1 + x];
      ASSERT_EQ(pixel, image.rgb[static_cast<size_t>(y) * stride + x]);
      any_ink = any_ink || pixel != 255;
    }
  }
  EXPECT_TRUE(any_ink);
}

}  // namespace
}  // namespace attn::cli
