// Line charts written as PNG with no library: a small RGB canvas, a 5x7 bitmap font for labels,
// and a PNG encoder using stored (uncompressed) deflate blocks, so `attn demo --plot` works on
// any machine with nothing installed.
#ifndef ATTN_CLI_PNG_PLOT_H_
#define ATTN_CLI_PNG_PLOT_H_

#include <cstdint>
#include <string>
#include <vector>

namespace attn::cli {

struct PlotSeries {
  std::string label;
  std::vector<double> x;
  std::vector<double> y;
};

struct PlotPanel {
  std::string title;
  std::string x_label;
  std::string y_label;
  bool log_x = false;
  bool log_y = false;
  std::vector<PlotSeries> series;
};

// An RGB image, row-major, 3 bytes per pixel.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
};

// Draws the panels side by side under `title`. Series keep their colour across panels by index.
Image RenderLinePlots(const std::string& title, const std::vector<PlotPanel>& panels);

// The PNG file bytes of `image` (8-bit RGB, no interlace, stored deflate blocks).
std::vector<uint8_t> EncodePng(const Image& image);

// RenderLinePlots + EncodePng + write; Error(kIo) naming the path if it cannot be written.
void WriteLinePlotsPng(const std::string& path, const std::string& title,
                       const std::vector<PlotPanel>& panels);

}  // namespace attn::cli

#endif  // ATTN_CLI_PNG_PLOT_H_
