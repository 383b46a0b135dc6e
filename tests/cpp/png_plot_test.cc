// SPDX-License-Identifier: Apache-2.0
// The plot writer read back by libpng's own decoder: the file holds exactly the pixels that were
// drawn, a demo-sized chart stays small, the file appears whole or not at all, and libpng's
// failures come back as attn::Error rather than a longjmp out of the program.
#include "cli/png_plot.h"

#include <gtest/gtest.h>
#include <png.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "attn/error.h"
#include "test_util.h"

namespace attn::cli {
namespace {

namespace fs = std::filesystem;

// Decodes PNG bytes to 8-bit RGB with libpng's simplified reader (no setjmp needed there).
struct Decoded {
  bool ok = false;
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
};

Decoded DecodePng(const std::vector<uint8_t>& bytes) {
  Decoded out;
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  if (png_image_begin_read_from_memory(&image, bytes.data(), bytes.size()) == 0) return out;
  image.format = PNG_FORMAT_RGB;
  out.rgb.resize(PNG_IMAGE_SIZE(image));
  if (png_image_finish_read(&image, nullptr, out.rgb.data(), 0, nullptr) == 0) return out;
  out.ok = true;
  out.width = static_cast<int>(image.width);
  out.height = static_cast<int>(image.height);
  return out;
}

std::array<uint8_t, 3> PixelAt(const Decoded& d, int x, int y) {
  const size_t at =
      (static_cast<size_t>(y) * static_cast<size_t>(d.width) + static_cast<size_t>(x)) * 3;
  return {d.rgb[at], d.rgb[at + 1], d.rgb[at + 2]};
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Two panels like `attn demo --plot`: five series, log axes, explicit ticks, error bars.
std::vector<PlotPanel> DemoSizedPanels() {
  const std::vector<std::string> names = {"MHA", "GQA", "MQA", "MLA NAIVE", "MLA ABSORBED"};
  PlotPanel kv{"KV CACHE PER SEQUENCE, ONE LAYER",
               "CONTEXT (TOKENS)",
               "KV CACHE (BYTES, BF16)",
               true,
               true,
               {},
               {}};
  PlotPanel time{"DECODE TIME PER TOKEN (MEASURED)",
                 "CONTEXT (TOKENS)",
                 "MS / TOKEN (MEDIAN, MIN-MAX)",
                 true,
                 true,
                 {},
                 {}};
  for (double t = 1024; t <= 131072; t *= 2) {
    kv.x_ticks.emplace_back(t, std::to_string(static_cast<int>(t / 1024)) + "K");
  }
  time.x_ticks = {{1024, "1K"}, {4096, "4K"}, {16384, "16K"}, {32768, "32K"}};
  for (size_t i = 0; i < names.size(); ++i) {
    const double per_token = 200.0 * static_cast<double>(i + 1);
    PlotSeries bytes{names[i], {}, {}, {}, {}};
    for (const auto& tick : kv.x_ticks) {
      bytes.x.push_back(tick.first);
      bytes.y.push_back(per_token * tick.first);
    }
    kv.series.push_back(bytes);
    PlotSeries ms{names[i], {}, {}, {}, {}};
    for (const auto& tick : time.x_ticks) {
      const double median = 2.0 + per_token * tick.first * 1e-6;
      ms.x.push_back(tick.first);
      ms.y.push_back(median);
      ms.y_low.push_back(0.9 * median);
      ms.y_high.push_back(1.2 * median);
    }
    time.series.push_back(ms);
  }
  return {kv, time};
}

TEST(PngPlotTest, LibpngDecodesExactlyThePixelsDrawn) {
  PlotPanel panel{"T", "X", "Y", true, false, {{"A", {1, 10, 100}, {3, 2, 1}, {}, {}}}, {}};
  const Image image = RenderLinePlots("TITLE 123", {panel, panel});
  ASSERT_GT(image.width, 0);
  const std::vector<uint8_t> png = EncodePng(image);
  const Decoded decoded = DecodePng(png);
  ASSERT_TRUE(decoded.ok);
  EXPECT_EQ(decoded.width, image.width);
  EXPECT_EQ(decoded.height, image.height);
  EXPECT_EQ(decoded.rgb, image.rgb);
}

TEST(PngPlotTest, DemoSizedChartIsSmallAndDrawsBackgroundInkAndSeries) {
  const Image image = RenderLinePlots("ATTN DEMO", DemoSizedPanels());
  const std::vector<uint8_t> png = EncodePng(image);
  EXPECT_LT(png.size(), 200u * 1024u);
  // Stored (uncompressed) the same picture is ~1.9 MB: libpng really compressed it.
  EXPECT_LT(png.size() * 20, image.rgb.size());

  const Decoded decoded = DecodePng(png);
  ASSERT_TRUE(decoded.ok);
  ASSERT_EQ(decoded.rgb, image.rgb);
  EXPECT_EQ(PixelAt(decoded, 0, 0), (std::array<uint8_t, 3>{255, 255, 255}));
  EXPECT_EQ(PixelAt(decoded, decoded.width - 1, decoded.height - 1),
            (std::array<uint8_t, 3>{255, 255, 255}));
  // Black text and axes, and the first two series' colours (lines, markers, legend swatches).
  int black = 0;
  int blue = 0;
  int orange = 0;
  for (int y = 0; y < decoded.height; ++y) {
    for (int x = 0; x < decoded.width; ++x) {
      const auto p = PixelAt(decoded, x, y);
      black += p == std::array<uint8_t, 3>{0, 0, 0};
      blue += p == std::array<uint8_t, 3>{31, 119, 180};
      orange += p == std::array<uint8_t, 3>{255, 127, 14};
    }
  }
  EXPECT_GT(black, 1000);
  EXPECT_GT(blue, 100);
  EXPECT_GT(orange, 100);
}

TEST(PngPlotTest, LibpngErrorsBecomeAttnErrors) {
  // libpng refuses widths over 1,000,000 pixels by default (png_set_user_limits): its error
  // callback must surface as Error(kIo), not a crash.
  Image wide;
  wide.width = 1000001;
  wide.height = 1;
  wide.rgb.assign(static_cast<size_t>(wide.width) * 3, 255);
  try {
    EncodePng(wide);
    FAIL() << "EncodePng accepted a width libpng refuses";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("IHDR"), std::string::npos) << e.what();
  }

  Image empty;
  try {
    EncodePng(empty);
    FAIL() << "EncodePng accepted an empty image";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  }
}

class PngPlotFileTest : public testing::ScratchDirTest {};

TEST_F(PngPlotFileTest, WritesWholeFileAndLeavesNoTemporary) {
  const std::string path = (dir_ / "plot.png").string();
  {
    std::ofstream old(path);
    old << "an older file, replaced whole";
  }
  WriteLinePlotsPng(path, "ATTN DEMO", DemoSizedPanels());
  const Decoded decoded = DecodePng(ReadFile(path));
  ASSERT_TRUE(decoded.ok);
  EXPECT_EQ(decoded.rgb, RenderLinePlots("ATTN DEMO", DemoSizedPanels()).rgb);
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    names.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(names, std::vector<std::string>{"plot.png"});
  // A new file gets io::AtomicWriteFile's mode for new files (0644 less the umask), not mkstemp's
  // private 0600.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  EXPECT_EQ(static_cast<unsigned>(fs::status(path).permissions()), 0644u & ~mask);
}

TEST_F(PngPlotFileTest, UnwritableDirectoryIsAnIoErrorNamingThePath) {
  const std::string path = (dir_ / "missing" / "plot.png").string();
  try {
    WriteLinePlotsPng(path, "T", DemoSizedPanels());
    FAIL() << "wrote into a directory that does not exist";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "missing"));
}

}  // namespace
}  // namespace attn::cli
