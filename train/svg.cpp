// See svg.h.
#include "train/svg.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace ssmtrain {

std::string line_chart_svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                           const std::vector<Series>& series) {
  constexpr double W = 640, H = 400, left = 70, right = 20, top = 40, bottom = 50;
  double x0 = std::numeric_limits<double>::max(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const Series& s : series)
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, s.y[i]), y1 = std::max(y1, s.y[i]);
    }
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * (W - left - right); };
  auto py = [&](double y) { return H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom); };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"22\" font-size=\"15\">{}</text>\n",
      W, H, left, title);
  svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"black\"/>\n", left, H - bottom, W - right);
  svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"black\"/>\n", left, top, H - bottom);
  for (int i = 0; i <= 4; ++i) {
    const double xv = x0 + (x1 - x0) * i / 4, yv = y0 + (y1 - y0) * i / 4;
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:.4g}</text>\n", px(xv), H - bottom + 16, xv);
    svg += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:.4g}</text>\n", left - 6, py(yv) + 4, yv);
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#ddd\"/>\n", left, py(yv), W - right);
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", (left + W - right) / 2, H - 12, x_label);
  svg += fmt::format("<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{}</text>\n",
                     (top + H - bottom) / 2, (top + H - bottom) / 2, y_label);
  double legend_y = top + 4;
  for (const Series& s : series) {
    std::string points;
    for (size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.y[i])) points += fmt::format("{:.1f},{:.1f} ", px(s.x[i]), py(s.y[i]));
    svg += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n", s.color, points);
    if (s.x.size() <= 50)
      for (size_t i = 0; i < s.x.size(); ++i)
        if (std::isfinite(s.y[i]))
          svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"{}\"/>\n", px(s.x[i]), py(s.y[i]), s.color);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>\n", W - right - 150, legend_y + 10, s.color, s.name);
    legend_y += 16;
  }
  return svg + "</svg>\n";
}

}  // namespace ssmtrain

namespace ssmtrain {
namespace {

// Colour of v in [0, 1]: linear between five stops from dark blue through teal to yellow.
std::string scale_colour(double v) {
  static const int stops[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  v = std::clamp(v, 0.0, 1.0) * 4.0;
  const int i = std::min(int(v), 3);
  const double f = v - i;
  int rgb[3];
  for (int c = 0; c < 3; ++c) rgb[c] = int(std::lround(stops[i][c] + f * (stops[i + 1][c] - stops[i][c])));
  return fmt::format("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2]);
}

}  // namespace

std::string svg_escape(const std::string& text) {
  std::string o;
  for (char c : text) {
    if (c == '&') o += "&amp;";
    else if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

std::string heatmap_svg(const Heatmap& map) {
  const size_t rows = map.y_ticks.size(), cols = map.x_ticks.size();
  constexpr double left = 80, bottom = 60, bar_w = 16, bar_gap = 30, bar_text = 90;
  const double top = map.subtitle.empty() ? 50 : 66;
  const double cell_w = std::max(40.0, 480.0 / double(std::max<size_t>(cols, 1)));
  const double cell_h = std::max(24.0, 300.0 / double(std::max<size_t>(rows, 1)));
  const double plot_w = cell_w * double(cols), plot_h = cell_h * double(rows);
  // Wide enough for the title lines (about 0.6 em per character).
  const double title_w = 20 + std::max(9.0 * double(map.title.size()), 7.0 * double(map.subtitle.size()));
  const double W = std::max(left + plot_w + bar_gap + bar_w + bar_text, title_w), H = top + plot_h + bottom;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"10\" y=\"24\" font-size=\"15\">{}</text>\n",
      W, H, svg_escape(map.title));
  if (!map.subtitle.empty())
    svg += fmt::format("<text x=\"10\" y=\"44\" font-size=\"11\" fill=\"#444\">{}</text>\n", svg_escape(map.subtitle));
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) {
      const double v = r < map.values.size() && c < map.values[r].size() ? map.values[r][c] : std::nan("");
      const double x = left + cell_w * double(c), y = top + cell_h * double(r);
      const bool known = std::isfinite(v);
      svg += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\" "
                         "stroke=\"white\"/>\n",
                         x, y, cell_w, cell_h, known ? scale_colour(v) : "#cccccc");
      svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"{}\">{}</text>\n",
                         x + cell_w / 2, y + cell_h / 2 + 4, known && v < 0.6 ? "white" : "black",
                         known ? fmt::format("{:.0f}%", 100 * v) : "n/a");
    }
  for (size_t c = 0; c < cols; ++c)
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n",
                       left + cell_w * (double(c) + 0.5), top + plot_h + 16, svg_escape(map.x_ticks[c]));
  for (size_t r = 0; r < rows; ++r)
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n", left - 6,
                       top + cell_h * (double(r) + 0.5) + 4, svg_escape(map.y_ticks[r]));
  svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", left + plot_w / 2, H - 16,
                     svg_escape(map.x_label));
  svg += fmt::format("<text x=\"18\" y=\"{0:.1f}\" transform=\"rotate(-90 18 {0:.1f})\" text-anchor=\"middle\">{1}</text>\n",
                     top + plot_h / 2, svg_escape(map.y_label));
  // Colour bar: 0 at the bottom, 1 at the top, ticks every 0.25.
  const double bx = left + plot_w + bar_gap;
  constexpr int steps = 20;
  for (int i = 0; i < steps; ++i)
    svg += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{}\" height=\"{:.2f}\" fill=\"{}\"/>\n", bx,
                       top + plot_h * (1.0 - double(i + 1) / steps), bar_w, plot_h / steps + 0.5,
                       scale_colour((i + 0.5) / steps));
  svg += fmt::format("<rect x=\"{:.1f}\" y=\"{}\" width=\"{}\" height=\"{:.1f}\" fill=\"none\" stroke=\"black\"/>\n", bx,
                     top, bar_w, plot_h);
  for (int i = 0; i <= 4; ++i) {
    const double y = top + plot_h * (1.0 - i / 4.0);
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\">{}%</text>\n", bx + bar_w + 4, y + 4, 25 * i);
  }
  svg += fmt::format("<text x=\"{0:.1f}\" y=\"{1:.1f}\" transform=\"rotate(90 {0:.1f} {1:.1f})\" "
                     "text-anchor=\"middle\">{2}</text>\n",
                     bx + bar_w + 44, top + plot_h / 2, svg_escape(map.value_label));
  return svg + "</svg>\n";
}

}  // namespace ssmtrain
