// A minimal line chart as SVG (loss curves): one or more series of (x, y) points, axes with
// a few labelled ticks, a legend. Written next to the numbers it shows.
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

}  // namespace ssmtrain
