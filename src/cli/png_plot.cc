// SPDX-License-Identifier: Apache-2.0
#include "cli/png_plot.h"

#include <png.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "attn/error.h"
#include "io/files.h"

namespace attn::cli {
namespace {

// 5x7 glyphs, one string of 7 rows x 5 columns ('#' = ink). Text is drawn upper-case.
struct Glyph {
  char c;
  const char* rows[7];
};

constexpr Glyph kFont[] = {
    {'A', {" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"}},
    {'B', {"#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "}},
    {'C', {" ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### "}},
    {'D', {"#### ", "#   #", "#   #", "#   #", "#   #", "#   #", "#### "}},
    {'E', {"#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"}},
    {'F', {"#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "}},
    {'G', {" ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ####"}},
    {'H', {"#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"}},
    {'I', {" ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "}},
    {'J', {"  ###", "   # ", "   # ", "   # ", "   # ", "#  # ", " ##  "}},
    {'K', {"#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #"}},
    {'L', {"#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####"}},
    {'M', {"#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #"}},
    {'N', {"#   #", "##  #", "# # #", "#  ##", "#   #", "#   #", "#   #"}},
    {'O', {" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "}},
    {'P', {"#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    "}},
    {'Q', {" ### ", "#   #", "#   #", "#   #", "# # #", "#  # ", " ## #"}},
    {'R', {"#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"}},
    {'S', {" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "}},
    {'T', {"#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "}},
    {'U', {"#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "}},
    {'V', {"#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  "}},
    {'W', {"#   #", "#   #", "#   #", "# # #", "# # #", "# # #", " # # "}},
    {'X', {"#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #"}},
    {'Y', {"#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  "}},
    {'Z', {"#####", "    #", "   # ", "  #  ", " #   ", "#    ", "#####"}},
    {'0', {" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "}},
    {'1', {"  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "}},
    {'2', {" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"}},
    {'3', {"#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "}},
    {'4', {"   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "}},
    {'5', {"#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "}},
    {'6', {"  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "}},
    {'7', {"#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "}},
    {'8', {" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "}},
    {'9', {" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "}},
    {'.', {"     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "}},
    {',', {"     ", "     ", "     ", "     ", " ##  ", "  #  ", " #   "}},
    {'-', {"     ", "     ", "     ", "#####", "     ", "     ", "     "}},
    {'+', {"     ", "  #  ", "  #  ", "#####", "  #  ", "  #  ", "     "}},
    {'=', {"     ", "     ", "#####", "     ", "#####", "     ", "     "}},
    {'/', {"    #", "    #", "   # ", "  #  ", " #   ", "#    ", "#    "}},
    {'(', {"   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # "}},
    {')', {" #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   "}},
    {':', {"     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     "}},
    {'%', {"##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##"}},
    {'_', {"     ", "     ", "     ", "     ", "     ", "     ", "#####"}},
    {'x', {"     ", "     ", "#   #", " # # ", "  #  ", " # # ", "#   #"}},
};

using Color = std::array<uint8_t, 3>;
constexpr Color kBlack = {0, 0, 0};
constexpr Color kGrey = {200, 200, 200};
constexpr Color kPalette[] = {{31, 119, 180},  {255, 127, 14}, {44, 160, 44},   {214, 39, 40},
                              {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127}};

const Glyph* FindGlyph(char c) {
  if (c != 'x') c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const Glyph& g : kFont) {
    if (g.c == c) return &g;
  }
  return nullptr;  // space and anything unknown draw nothing
}

class Canvas {
 public:
  Canvas(int width, int height) {
    image_.width = width;
    image_.height = height;
    image_.rgb.assign(static_cast<size_t>(width) * static_cast<size_t>(height) * 3, 255);
  }
  Image Take() { return std::move(image_); }

  void Pixel(int x, int y, const Color& c) {
    if (x < 0 || y < 0 || x >= image_.width || y >= image_.height) return;
    const size_t at =
        (static_cast<size_t>(y) * static_cast<size_t>(image_.width) + static_cast<size_t>(x)) * 3;
    std::copy(c.begin(), c.end(), image_.rgb.begin() + static_cast<std::ptrdiff_t>(at));
  }
  void Rect(int x0, int y0, int x1, int y1, const Color& c) {
    for (int y = y0; y <= y1; ++y) {
      for (int x = x0; x <= x1; ++x) Pixel(x, y, c);
    }
  }
  // Bresenham, `thickness` pixels wide.
  void Line(double fx0, double fy0, double fx1, double fy1, const Color& c, int thickness) {
    int x0 = static_cast<int>(std::lround(fx0));
    int y0 = static_cast<int>(std::lround(fy0));
    const int x1 = static_cast<int>(std::lround(fx1));
    const int y1 = static_cast<int>(std::lround(fy1));
    const int dx = std::abs(x1 - x0);
    const int dy = -std::abs(y1 - y0);
    const int sx = x0 < x1 ? 1 : -1;
    const int sy = y0 < y1 ? 1 : -1;
    int error = dx + dy;
    const int half = thickness / 2;
    while (true) {
      Rect(x0 - half, y0 - half, x0 - half + thickness - 1, y0 - half + thickness - 1, c);
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * error;
      if (e2 >= dy) {
        error += dy;
        x0 += sx;
      }
      if (e2 <= dx) {
        error += dx;
        y0 += sy;
      }
    }
  }
  // Text with its top-left corner at (x, y), each font pixel drawn as scale x scale.
  void Text(int x, int y, const std::string& text, const Color& c, int scale) {
    for (char ch : text) {
      if (const Glyph* g = FindGlyph(ch)) {
        for (int row = 0; row < 7; ++row) {
          for (int col = 0; col < 5; ++col) {
            if (g->rows[row][col] == '#') {
              Rect(x + col * scale, y + row * scale, x + col * scale + scale - 1,
                   y + row * scale + scale - 1, c);
            }
          }
        }
      }
      x += 6 * scale;
    }
  }
  // Text rotated a quarter turn counter-clockwise, reading bottom to top, starting at (x, y).
  void TextUp(int x, int y, const std::string& text, const Color& c, int scale) {
    for (char ch : text) {
      if (const Glyph* g = FindGlyph(ch)) {
        for (int row = 0; row < 7; ++row) {
          for (int col = 0; col < 5; ++col) {
            if (g->rows[row][col] == '#') {
              const int px = x + row * scale;
              const int py = y - col * scale;
              Rect(px, py - scale + 1, px + scale - 1, py, c);
            }
          }
        }
      }
      y -= 6 * scale;
    }
  }
  static int TextWidth(const std::string& text, int scale) {
    return static_cast<int>(text.size()) * 6 * scale;
  }

 private:
  Image image_;
};

// 1K, 64K, 2M, 1.5G: compact tick labels.
std::string Short(double v) {
  const char* suffix[] = {"", "K", "M", "G", "T", "P"};
  int unit = 0;
  double scaled = v;
  while (std::fabs(scaled) >= 1000.0 && unit < 5) {
    scaled /= 1000.0;
    ++unit;
  }
  char buffer[32];
  if (std::fabs(scaled - std::round(scaled)) < 1e-9 || std::fabs(scaled) >= 100.0) {
    std::snprintf(buffer, sizeof(buffer), "%.0f%s", scaled, suffix[unit]);
  } else if (std::fabs(scaled) >= 10.0) {
    std::snprintf(buffer, sizeof(buffer), "%.1f%s", scaled, suffix[unit]);
  } else {
    std::snprintf(buffer, sizeof(buffer), "%.2g%s", scaled, suffix[unit]);
  }
  return buffer;
}

struct Axis {
  double lo = 0.0;
  double hi = 1.0;
  bool log = false;
  std::vector<std::pair<double, std::string>> explicit_ticks;

  double Map(double v, double pixel_lo, double pixel_hi) const {
    const double a = log ? std::log10(lo) : lo;
    const double b = log ? std::log10(hi) : hi;
    const double t = ((log ? std::log10(v) : v) - a) / (b - a);
    return pixel_lo + t * (pixel_hi - pixel_lo);
  }
  std::vector<std::pair<double, std::string>> Ticks() const {
    if (!explicit_ticks.empty()) return explicit_ticks;
    std::vector<std::pair<double, std::string>> ticks;
    auto add = [&](double v) {
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) ticks.emplace_back(v, Short(v));
    };
    if (log) {
      // Three decades or less: 1-2-5 ticks, else a decade has too few labels to read values off.
      const bool fine = std::log10(hi / lo) <= 3.0 + 1e-9;
      for (double p = std::floor(std::log10(lo)); p <= std::ceil(std::log10(hi)); p += 1.0) {
        const double decade = std::pow(10.0, p);
        add(decade);
        if (fine) {
          add(2.0 * decade);
          add(5.0 * decade);
        }
      }
      std::sort(ticks.begin(), ticks.end());
      // Label both ends too when they fall between decades.
      if (ticks.empty() || ticks.front().first > lo * (1 + 1e-9)) {
        ticks.insert(ticks.begin(), {lo, Short(lo)});
      }
      if (ticks.back().first < hi * (1 - 1e-9)) ticks.emplace_back(hi, Short(hi));
      return ticks;
    }
    const double raw = (hi - lo) / 5.0;
    const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
    double step = magnitude;
    for (double m : {1.0, 2.0, 5.0, 10.0}) {
      if (m * magnitude >= raw) {
        step = m * magnitude;
        break;
      }
    }
    for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) {
      // -0 and 1e-17 from the loop's rounding print as 0.
      ticks.emplace_back(v, Short(std::fabs(v) < 1e-9 * step ? 0.0 : v));
    }
    return ticks;
  }
};

Axis MakeXAxis(const PlotPanel& panel) {
  Axis axis;
  axis.log = panel.log_x;
  if (!panel.x_ticks.empty()) {
    axis.explicit_ticks = panel.x_ticks;
    axis.lo = panel.x_ticks.front().first;
    axis.hi = panel.x_ticks.back().first;
    if (axis.hi > axis.lo) return axis;
  }
  double lo = INFINITY;
  double hi = -INFINITY;
  for (const PlotSeries& s : panel.series) {
    for (double v : s.x) {
      if (!std::isfinite(v) || (axis.log && v <= 0.0)) continue;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  if (!std::isfinite(lo)) {
    lo = axis.log ? 1.0 : 0.0;
    hi = axis.log ? 10.0 : 1.0;
  }
  if (axis.log) {
    lo = std::pow(10.0, std::floor(std::log10(lo)));
    hi = std::pow(10.0, std::ceil(std::log10(hi)));
    if (hi <= lo) hi = lo * 10.0;
  } else if (hi <= lo) {
    hi = lo + 1.0;
  }
  axis.explicit_ticks.clear();
  axis.lo = lo;
  axis.hi = hi;
  return axis;
}

// The y axis covers every value and every error bar end.
Axis MakeYAxis(const PlotPanel& panel) {
  Axis axis;
  axis.log = panel.log_y;
  double lo = INFINITY;
  double hi = -INFINITY;
  for (const PlotSeries& s : panel.series) {
    for (const std::vector<double>* values : {&s.y, &s.y_low, &s.y_high}) {
      for (double v : *values) {
        if (!std::isfinite(v) || (axis.log && v <= 0.0)) continue;
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
  }
  if (!std::isfinite(lo)) {
    lo = axis.log ? 1.0 : 0.0;
    hi = axis.log ? 10.0 : 1.0;
  }
  if (axis.log) {
    // End on 1-2-5 values, so the data fills the panel instead of up to a decade of empty
    // margin at either end.
    const double decade_lo = std::pow(10.0, std::floor(std::log10(lo)));
    const double decade_hi = std::pow(10.0, std::ceil(std::log10(hi)));
    double new_lo = decade_lo;
    for (double m : {2.0, 5.0}) {
      if (m * decade_lo <= lo * (1 + 1e-9)) new_lo = m * decade_lo;
    }
    double new_hi = decade_hi;
    for (double m : {0.5, 0.2}) {
      if (m * decade_hi >= hi * (1 - 1e-9)) new_hi = m * decade_hi;
    }
    lo = new_lo;
    hi = new_hi > lo ? new_hi : lo * 10.0;
  } else {
    lo = std::min(lo, 0.0);
    if (hi <= lo) hi = lo + 1.0;
    hi *= 1.1;
  }
  axis.lo = lo;
  axis.hi = hi;
  return axis;
}

constexpr int kScale = 2;        // font pixels per glyph pixel
constexpr int kTextHeight = 14;  // 7 rows at kScale

void DrawPanel(Canvas& canvas, const PlotPanel& panel, int left, int top, int width, int height) {
  const int plot_left = left + 100;
  const int plot_right = left + width - 30;
  const int plot_top = top + 40;
  const int plot_bottom = top + height - 60;
  canvas.Text(left + (width - Canvas::TextWidth(panel.title, kScale)) / 2, top + 8, panel.title,
              kBlack, kScale);
  const Axis x_axis = MakeXAxis(panel);
  const Axis y_axis = MakeYAxis(panel);
  for (const auto& [value, label] : x_axis.Ticks()) {
    const double px = x_axis.Map(value, plot_left, plot_right);
    canvas.Line(px, plot_top, px, plot_bottom, kGrey, 1);
    canvas.Text(static_cast<int>(px) - Canvas::TextWidth(label, kScale) / 2, plot_bottom + 8, label,
                kBlack, kScale);
  }
  for (const auto& [value, label] : y_axis.Ticks()) {
    const double py = y_axis.Map(value, plot_bottom, plot_top);
    canvas.Line(plot_left, py, plot_right, py, kGrey, 1);
    canvas.Text(plot_left - 8 - Canvas::TextWidth(label, kScale), static_cast<int>(py) - 7, label,
                kBlack, kScale);
  }
  canvas.Line(plot_left, plot_bottom, plot_right, plot_bottom, kBlack, 2);
  canvas.Line(plot_left, plot_top, plot_left, plot_bottom, kBlack, 2);
  canvas.Text((plot_left + plot_right - Canvas::TextWidth(panel.x_label, kScale)) / 2,
              plot_bottom + 34, panel.x_label, kBlack, kScale);
  canvas.TextUp(left + 6, (plot_top + plot_bottom + Canvas::TextWidth(panel.y_label, kScale)) / 2,
                panel.y_label, kBlack, kScale);

  for (size_t i = 0; i < panel.series.size(); ++i) {
    const PlotSeries& s = panel.series[i];
    const Color& color = kPalette[i % std::size(kPalette)];
    const bool has_spread = s.y_low.size() == s.y.size() && s.y_high.size() == s.y.size();
    bool have_previous = false;
    double px0 = 0.0;
    double py0 = 0.0;
    for (size_t k = 0; k < s.x.size() && k < s.y.size(); ++k) {
      if ((panel.log_x && s.x[k] <= 0.0) || (panel.log_y && s.y[k] <= 0.0)) continue;
      const double px = x_axis.Map(s.x[k], plot_left, plot_right);
      const double py = y_axis.Map(s.y[k], plot_bottom, plot_top);
      if (have_previous) canvas.Line(px0, py0, px, py, color, 3);
      if (has_spread && (!panel.log_y || s.y_low[k] > 0.0)) {
        const double low = y_axis.Map(s.y_low[k], plot_bottom, plot_top);
        const double high = y_axis.Map(s.y_high[k], plot_bottom, plot_top);
        canvas.Line(px, low, px, high, color, 2);
        canvas.Line(px - 6, low, px + 6, low, color, 2);
        canvas.Line(px - 6, high, px + 6, high, color, 2);
      }
      canvas.Rect(static_cast<int>(px) - 3, static_cast<int>(py) - 3, static_cast<int>(px) + 3,
                  static_cast<int>(py) + 3, color);
      px0 = px;
      py0 = py;
      have_previous = true;
    }
  }
}

// One row of colour swatches and labels, centred at height `y`.
void DrawLegend(Canvas& canvas, const std::vector<std::string>& labels, int image_width, int y) {
  constexpr int kSwatch = 28;
  constexpr int kGap = 36;
  int total = 0;
  for (const std::string& label : labels) {
    total += kSwatch + 8 + Canvas::TextWidth(label, kScale) + kGap;
  }
  int x = (image_width - (total - kGap)) / 2;
  for (size_t i = 0; i < labels.size(); ++i) {
    const Color& color = kPalette[i % std::size(kPalette)];
    canvas.Rect(x, y + kTextHeight / 2 - 2, x + kSwatch - 1, y + kTextHeight / 2 + 2, color);
    canvas.Rect(x + kSwatch / 2 - 3, y + kTextHeight / 2 - 3, x + kSwatch / 2 + 3,
                y + kTextHeight / 2 + 3, color);
    x += kSwatch + 8;
    canvas.Text(x, y, labels[i], kBlack, kScale);
    x += Canvas::TextWidth(labels[i], kScale) + kGap;
  }
}

// libpng reports errors through a callback that must not return; it longjmps back to
// EncodeInto(), which keeps no C++ objects alive across the jump. The message is kept here.
struct PngSink {
  std::vector<uint8_t>* bytes;
  char message[256];
};

void OnPngError(png_structp png, png_const_charp message) {
  auto* sink = static_cast<PngSink*>(png_get_error_ptr(png));
  std::snprintf(sink->message, sizeof(sink->message), "%s", message);
  png_longjmp(png, 1);
}

void OnPngWarning(png_structp /*png*/, png_const_charp /*message*/) {}

void OnPngWrite(png_structp png, png_bytep data, size_t n) {
  auto* sink = static_cast<PngSink*>(png_get_io_ptr(png));
  bool out_of_memory = false;
  try {
    sink->bytes->insert(sink->bytes->end(), data, data + n);
  } catch (const std::bad_alloc&) {
    out_of_memory = true;  // png_error() longjmps: not from inside the handler
  }
  if (out_of_memory) png_error(png, "out of memory");
}

void OnPngFlush(png_structp /*png*/) {}

// False with sink->message set when libpng fails.
bool EncodeInto(const Image& image, PngSink* sink) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, sink, OnPngError, OnPngWarning);
  if (png == nullptr) {
    std::snprintf(sink->message, sizeof(sink->message), "cannot create a libpng writer");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_write_struct(&png, nullptr);
    std::snprintf(sink->message, sizeof(sink->message), "cannot create a libpng writer");
    return false;
  }
  if (setjmp(png_jmpbuf(png)) != 0) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_set_write_fn(png, sink, OnPngWrite, OnPngFlush);
  png_set_IHDR(png, info, static_cast<png_uint_32>(image.width),
               static_cast<png_uint_32>(image.height), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, 9);
  png_write_info(png, info);
  const size_t stride = static_cast<size_t>(image.width) * 3;
  for (int y = 0; y < image.height; ++y) {
    png_write_row(png, image.rgb.data() + stride * static_cast<size_t>(y));
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

}  // namespace

Image RenderLinePlots(const std::string& title, const std::vector<PlotPanel>& panels) {
  const int panel_width = 640;
  const int panel_height = 470;
  const int title_height = 52;
  const int legend_height = 40;
  const int count = std::max<int>(1, static_cast<int>(panels.size()));
  const int width = panel_width * count;
  Canvas canvas(width, title_height + panel_height + legend_height);
  canvas.Text((width - Canvas::TextWidth(title, kScale)) / 2, 14, title, kBlack, kScale);
  std::vector<std::string> labels;
  for (int i = 0; i < static_cast<int>(panels.size()); ++i) {
    const PlotPanel& panel = panels[static_cast<size_t>(i)];
    DrawPanel(canvas, panel, i * panel_width, title_height, panel_width, panel_height);
    for (size_t k = labels.size(); k < panel.series.size(); ++k) {
      labels.push_back(panel.series[k].label);
    }
  }
  DrawLegend(canvas, labels, width, title_height + panel_height + 8);
  return canvas.Take();
}

std::vector<uint8_t> EncodePng(const Image& image) {
  Check(image.width > 0 && image.height > 0 &&
            image.rgb.size() ==
                static_cast<size_t>(image.width) * static_cast<size_t>(image.height) * 3,
        ErrorKind::kInvalidArgument, "EncodePng: the image has no pixels or a wrong buffer size");
  std::vector<uint8_t> bytes;
  PngSink sink{&bytes, {}};
  // Not inside Check(): its message argument could be built before EncodeInto() has run.
  if (!EncodeInto(image, &sink)) {
    throw Error(ErrorKind::kIo, std::string("cannot encode PNG: ") + sink.message);
  }
  return bytes;
}

void WriteLinePlotsPng(const std::string& path, const std::string& title,
                       const std::vector<PlotPanel>& panels) {
  const std::vector<uint8_t> png = EncodePng(RenderLinePlots(title, panels));
  // The one atomic writer (io/files.h): exclusive temporary beside the target, mode kept, fsync,
  // rename last; a failure leaves an existing plot untouched.
  io::AtomicWriteFile(path,
                      std::string_view(reinterpret_cast<const char*>(png.data()), png.size()));
}

}  // namespace attn::cli
