// render_svg: horizontal bar charts, one group per bench_chart, isola's bar first and coloured,
// its peers' grey, each bar labelled with its value. A linear scale per chart, from 0.
#include "tools/bench/bench.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>

#include <fmt/core.h>

namespace isola::cli {
namespace {

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::optional<double> find(const bench_report& r, const std::string& key) {
  for (const auto& m : r.results) {
    if (m.key == key && std::isfinite(m.value)) return m.value;
  }
  return std::nullopt;
}

/// 932000 -> "932 000", 2.37 -> "2.37", 0.0931 -> "0.093".
std::string number(double v) {
  if (std::fabs(v) >= 1000) {
    std::string digits = fmt::format("{:.0f}", v);
    std::string out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
      if (i > 0 && (digits.size() - i) % 3 == 0 && digits[i - 1] != '-') out += ' ';
      out += digits[i];
    }
    return out;
  }
  if (std::fabs(v) >= 100) return fmt::format("{:.0f}", v);
  if (std::fabs(v) >= 10) return fmt::format("{:.1f}", v);
  if (std::fabs(v) >= 0.1) return fmt::format("{:.2f}", v);
  return fmt::format("{:.3g}", v);
}

}  // namespace

std::string render_svg(const std::string& heading, const bench_report& r) {
  constexpr int width = 760, left = 210, bar_area = 400, bar_h = 18, gap = 6, margin = 16;
  std::string body;
  int y = margin + 22;
  body += fmt::format(R"(<text x="{}" y="{}" class="heading">{}</text>)" "\n", margin, y,
                      escape(heading));
  y += 14;
  for (const auto& c : r.charts) {
    std::vector<std::pair<std::string, double>> bars;
    for (const auto& [label, key] : c.bars) {
      if (auto v = find(r, key)) bars.emplace_back(label, *v);
    }
    if (bars.empty()) continue;
    double top = 0;
    for (const auto& b : bars) top = std::max(top, b.second);
    if (top <= 0) top = 1;
    y += 26;
    body += fmt::format(R"(<text x="{}" y="{}" class="title">{} <tspan class="note">({}, {} is better)</tspan></text>)" "\n",
                        margin, y, escape(c.title), escape(c.unit),
                        c.higher_is_better ? "higher" : "lower");
    y += 8;
    for (std::size_t i = 0; i < bars.size(); ++i) {
      const auto& [label, v] = bars[i];
      const double w = std::max(1.0, bar_area * std::max(v, 0.0) / top);
      body += fmt::format(R"(<text x="{}" y="{}" class="label">{}</text>)" "\n", left - 8,
                          y + bar_h - 4, escape(label));
      body += fmt::format(R"(<rect x="{}" y="{}" width="{:.1f}" height="{}" class="{}"/>)" "\n",
                          left, y, w, bar_h, i == 0 ? "isola" : "peer");
      body += fmt::format(R"(<text x="{:.1f}" y="{}" class="value">{}</text>)" "\n",
                          left + w + 6, y + bar_h - 4, escape(number(v)));
      y += bar_h + gap;
    }
  }
  y += margin;
  return fmt::format(
      R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0}" height="{1}" viewBox="0 0 {0} {1}">)"
      "\n"
      "<style>\n"
      "  text {{ font-family: sans-serif; font-size: 12px; fill: #222; }}\n"
      "  .heading {{ font-size: 15px; font-weight: bold; }}\n"
      "  .title {{ font-size: 13px; font-weight: bold; }}\n"
      "  .note {{ font-weight: normal; fill: #666; }}\n"
      "  .label {{ text-anchor: end; }}\n"
      "  .isola {{ fill: #2b7bba; }}\n"
      "  .peer {{ fill: #a8a8a8; }}\n"
      "</style>\n"
      R"(<rect width="100%" height="100%" fill="white"/>)"
      "\n{2}</svg>\n",
      width, y, body);
}

}  // namespace isola::cli
