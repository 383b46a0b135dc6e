#include "cli/png_plot.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "attn/error.h"

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
constexpr Color kWhite = {255, 255, 255};
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
  double Map(double v, double pixel_lo, double pixel_hi) const {
    const double a = log ? std::log10(lo) : lo;
    const double b = log ? std::log10(hi) : hi;
    const double t = ((log ? std::log10(v) : v) - a) / (b - a);
    return pixel_lo + t * (pixel_hi - pixel_lo);
  }
  std::vector<double> Ticks() const {
    std::vector<double> ticks;
    if (log) {
      for (double p = std::floor(std::log10(lo)); p <= std::ceil(std::log10(hi)); p += 1.0) {
        const double v = std::pow(10.0, p);
        if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) ticks.push_back(v);
      }
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
      ticks.push_back(v);
    }
    return ticks;
  }
};

Axis MakeAxis(const std::vector<PlotSeries>& series, bool use_x, bool log) {
  Axis axis;
  axis.log = log;
  double lo = INFINITY;
  double hi = -INFINITY;
  for (const PlotSeries& s : series) {
    for (double v : use_x ? s.x : s.y) {
      if (!std::isfinite(v) || (log && v <= 0.0)) continue;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  if (!std::isfinite(lo)) {
    lo = log ? 1.0 : 0.0;
    hi = log ? 10.0 : 1.0;
  }
  if (log) {
    lo = std::pow(10.0, std::floor(std::log10(lo)));
    hi = std::pow(10.0, std::ceil(std::log10(hi)));
    if (hi <= lo) hi = lo * 10.0;
  } else {
    if (!use_x) lo = std::min(lo, 0.0);
    if (hi <= lo) hi = lo + 1.0;
    if (!use_x) hi *= 1.1;
  }
  axis.lo = lo;
  axis.hi = hi;
  return axis;
}

void DrawPanel(Canvas& canvas, const PlotPanel& panel, int left, int top, int width, int height) {
  const int plot_left = left + 90;
  const int plot_right = left + width - 20;
  const int plot_top = top + 40;
  const int plot_bottom = top + height - 60;
  canvas.Text(left + (width - Canvas::TextWidth(panel.title, 2)) / 2, top + 8, panel.title, kBlack,
              2);
  const Axis x_axis = MakeAxis(panel.series, true, panel.log_x);
  const Axis y_axis = MakeAxis(panel.series, false, panel.log_y);
  for (double t : x_axis.Ticks()) {
    const double px = x_axis.Map(t, plot_left, plot_right);
    canvas.Line(px, plot_top, px, plot_bottom, kGrey, 1);
    const std::string label = Short(t);
    canvas.Text(static_cast<int>(px) - Canvas::TextWidth(label, 2) / 2, plot_bottom + 8, label,
                kBlack, 2);
  }
  for (double t : y_axis.Ticks()) {
    const double py = y_axis.Map(t, plot_bottom, plot_top);
    canvas.Line(plot_left, py, plot_right, py, kGrey, 1);
    const std::string label = Short(t);
    canvas.Text(plot_left - 8 - Canvas::TextWidth(label, 2), static_cast<int>(py) - 7, label,
                kBlack, 2);
  }
  canvas.Line(plot_left, plot_bottom, plot_right, plot_bottom, kBlack, 2);
  canvas.Line(plot_left, plot_top, plot_left, plot_bottom, kBlack, 2);
  canvas.Text((plot_left + plot_right - Canvas::TextWidth(panel.x_label, 2)) / 2, plot_bottom + 34,
              panel.x_label, kBlack, 2);
  canvas.TextUp(left + 4, (plot_top + plot_bottom + Canvas::TextWidth(panel.y_label, 2)) / 2,
                panel.y_label, kBlack, 2);

  for (size_t i = 0; i < panel.series.size(); ++i) {
    const PlotSeries& s = panel.series[i];
    const Color& color = kPalette[i % std::size(kPalette)];
    bool have_previous = false;
    double px0 = 0.0;
    double py0 = 0.0;
    for (size_t k = 0; k < s.x.size() && k < s.y.size(); ++k) {
      if ((panel.log_x && s.x[k] <= 0.0) || (panel.log_y && s.y[k] <= 0.0)) continue;
      const double px = x_axis.Map(s.x[k], plot_left, plot_right);
      const double py = y_axis.Map(s.y[k], plot_bottom, plot_top);
      if (have_previous) canvas.Line(px0, py0, px, py, color, 3);
      canvas.Rect(static_cast<int>(px) - 3, static_cast<int>(py) - 3, static_cast<int>(px) + 3,
                  static_cast<int>(py) + 3, color);
      px0 = px;
      py0 = py;
      have_previous = true;
    }
    // Legend, top-left inside the plot.
    const int ly = plot_top + 10 + static_cast<int>(i) * 20;
    canvas.Rect(plot_left + 12, ly + 3, plot_left + 36, ly + 9, color);
    canvas.Text(plot_left + 44, ly, s.label, kBlack, 2);
  }
}

uint32_t Crc32(const uint8_t* data, size_t n, uint32_t crc = 0) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

void PutU32(std::vector<uint8_t>& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}

void Chunk(std::vector<uint8_t>& png, const char type[4], const std::vector<uint8_t>& data) {
  PutU32(png, static_cast<uint32_t>(data.size()));
  const size_t start = png.size();
  png.insert(png.end(), type, type + 4);
  png.insert(png.end(), data.begin(), data.end());
  PutU32(png, Crc32(png.data() + start, png.size() - start));
}

}  // namespace

Image RenderLinePlots(const std::string& title, const std::vector<PlotPanel>& panels) {
  const int panel_width = 620;
  const int panel_height = 460;
  const int count = std::max<int>(1, static_cast<int>(panels.size()));
  Canvas canvas(panel_width * count, panel_height + 40);
  canvas.Rect(0, 0, panel_width * count - 1, panel_height + 39, kWhite);
  canvas.Text((panel_width * count - Canvas::TextWidth(title, 2)) / 2, 10, title, kBlack, 2);
  for (int i = 0; i < static_cast<int>(panels.size()); ++i) {
    DrawPanel(canvas, panels[static_cast<size_t>(i)], i * panel_width, 40, panel_width,
              panel_height);
  }
  return canvas.Take();
}

std::vector<uint8_t> EncodePng(const Image& image) {
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<uint8_t> header;
  PutU32(header, static_cast<uint32_t>(image.width));
  PutU32(header, static_cast<uint32_t>(image.height));
  header.insert(header.end(), {8, 2, 0, 0, 0});  // 8-bit RGB, deflate, filter 0, no interlace
  Chunk(png, "IHDR", header);

  // Scanlines, each behind filter type 0 (None).
  const size_t stride = static_cast<size_t>(image.width) * 3;
  std::vector<uint8_t> raw;
  raw.reserve((stride + 1) * static_cast<size_t>(image.height));
  for (int y = 0; y < image.height; ++y) {
    raw.push_back(0);
    const auto row =
        image.rgb.begin() + static_cast<std::ptrdiff_t>(stride * static_cast<size_t>(y));
    raw.insert(raw.end(), row, row + static_cast<std::ptrdiff_t>(stride));
  }
  // zlib stream (RFC 1950) of stored deflate blocks (RFC 1951 §3.2.4), Adler-32 trailer.
  std::vector<uint8_t> z = {0x78, 0x01};
  size_t offset = 0;
  do {
    const size_t n = std::min<size_t>(65535, raw.size() - offset);
    const bool final = offset + n == raw.size();
    z.push_back(final ? 1 : 0);
    z.push_back(static_cast<uint8_t>(n & 0xff));
    z.push_back(static_cast<uint8_t>(n >> 8));
    z.push_back(static_cast<uint8_t>(~n & 0xff));
    z.push_back(static_cast<uint8_t>((~n >> 8) & 0xff));
    z.insert(z.end(), raw.begin() + static_cast<std::ptrdiff_t>(offset),
             raw.begin() + static_cast<std::ptrdiff_t>(offset + n));
    offset += n;
  } while (offset < raw.size());
  uint32_t a = 1;
  uint32_t b = 0;
  for (uint8_t byte : raw) {
    a = (a + byte) % 65521u;
    b = (b + a) % 65521u;
  }
  PutU32(z, (b << 16) | a);
  Chunk(png, "IDAT", z);
  Chunk(png, "IEND", {});
  return png;
}

void WriteLinePlotsPng(const std::string& path, const std::string& title,
                       const std::vector<PlotPanel>& panels) {
  const std::vector<uint8_t> png = EncodePng(RenderLinePlots(title, panels));
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  Check(out.is_open(), ErrorKind::kIo, "cannot write plot '" + path + "'");
  out.write(reinterpret_cast<const char*>(png.data()), static_cast<std::streamsize>(png.size()));
  out.close();
  Check(!out.fail(), ErrorKind::kIo, "cannot write plot '" + path + "'");
}

}  // namespace attn::cli
