// SPDX-License-Identifier: Apache-2.0
// Line charts written as PNG: a small RGB canvas and a 5x7 bitmap font draw the picture (no
// plotting library to install), and libpng encodes it, compressed, into a few tens of KB.
#ifndef ATTN_CLI_PNG_PLOT_H_
#define ATTN_CLI_PNG_PLOT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace attn::cli {

struct PlotSeries {
  std::string label;
  std::vector<double> x;
  std::vector<double> y;
  // Optional spread per point (e.g. min and max of repeated measurements), drawn as a vertical
  // bar with caps; empty = none. When given, both have the size of y.
  std::vector<double> y_low;
  std::vector<double> y_high;
};

struct PlotPanel {
  std::string title;
  std::string x_label;
  std::string y_label;
  bool log_x = false;
  bool log_y = false;
  std::vector<PlotSeries> series;
  // Explicit x ticks (value, label), e.g. powers of two labelled 1K, 4K, 32K; empty = automatic
  // (decades on a log axis). The axis then spans exactly the first to the last tick.
  std::vector<std::pair<double, std::string>> x_ticks;
};

// An RGB image, row-major, 3 bytes per pixel.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
};

// Draws the panels side by side under `title`, with one legend below them. Series keep their
// colour across panels by index, so the legend names series by index too.
Image RenderLinePlots(const std::string& title, const std::vector<PlotPanel>& panels);

// The PNG file bytes of `image` (8-bit RGB, no interlace), encoded by libpng at zlib level 9.
// Throws Error(kIo) with libpng's message if it fails.
std::vector<uint8_t> EncodePng(const Image& image);

// RenderLinePlots + EncodePng, then written to a temporary file next to `path` and renamed over
// it, so a reader never sees half a file. Error(kIo) naming the path if it cannot be written.
void WriteLinePlotsPng(const std::string& path, const std::string& title,
                       const std::vector<PlotPanel>& panels);

}  // namespace attn::cli

#endif  // ATTN_CLI_PNG_PLOT_H_
