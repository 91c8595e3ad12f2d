// Minimal SVG charts, written next to the numbers they show: a line chart (loss curves): one
// or more series of (x, y) points, axes with a few labelled ticks, a legend; and a heatmap
// (retrieval accuracy over context length x depth) with a colour bar.
#pragma once

#include <string>
#include <vector>

namespace ssmtrain {

struct Series {
  std::string name;
  std::string color;  // any SVG color
  std::vector<double> x, y;
};

std::string line_chart_svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                           const std::vector<Series>& series);

// A grid of values in [0, 1] (NaN: no data, drawn grey): values[row][column], row 0 at the
// top. Columns and rows are labelled by x_ticks / y_ticks; each cell shows its value as a
// percentage; a colour bar labelled `value_label` maps 0..1 to colour (dark blue to yellow).
struct Heatmap {
  std::string title, subtitle;  // subtitle: a second, smaller line (e.g. the checkpoint's path)
  std::string x_label, y_label, value_label;
  std::vector<std::string> x_ticks, y_ticks;
  std::vector<std::vector<double>> values;
};

std::string heatmap_svg(const Heatmap& map);

// `text` with &, <, >, " escaped for SVG text and attributes.
std::string svg_escape(const std::string& text);

}  // namespace ssmtrain
