// See map_input.hpp.
#include "tools/isola/map_input.hpp"

#include "tools/isola/cli.hpp"

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <fmt/core.h>
#include <unistd.h>

namespace isola::cli {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t max_shown = 120;  ///< longer inputs are cut in messages

std::string_view trim(std::string_view s) {
  const char* ws = " \t\r\n\f\v";
  auto b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  auto e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

bool identifier_path(std::string_view s) {
  if (s.empty()) return false;
  std::size_t start = 0;
  for (;;) {
    auto dot = s.find('.', start);
    auto part = s.substr(start, dot == std::string_view::npos ? s.npos : dot - start);
    if (part.empty()) return false;
    if (std::isdigit(static_cast<unsigned char>(part.front()))) return false;
    for (unsigned char c : part) {
      if (!(std::isalnum(c) || c == '_' || c >= 0x80)) return false;
    }
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

/// The start of the input for messages: not cut inside a UTF-8 character.
std::string head_of(const input_item& it, bool& cut) {
  cut = it.text.size() > max_shown;
  if (!cut) return it.text;
  std::string t = it.text.substr(0, max_shown);
  if (it.utf8) {
    while (!t.empty() && !valid_utf8(t)) t.pop_back();
  }
  return t;
}

}  // namespace

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    std::uint32_t cp = len == 1 ? c : c & (0x7f >> len);
    for (std::size_t k = 1; k < len; ++k) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
      return false;
    }
    i += len;
  }
  return true;
}

std::vector<input_item> read_inputs(std::istream& in) {
  std::vector<input_item> items;
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    auto t = trim(line);
    if (t.empty()) continue;
    input_item it;
    it.line = number;
    it.text.assign(t);
    it.utf8 = valid_utf8(it.text);
    items.push_back(std::move(it));
  }
  return items;
}

std::vector<input_item> load_inputs(const std::string& input) {
  if (input == "-") {
    if (isatty(STDIN_FILENO)) {
      fmt::print(stderr, "map: reading inputs from the terminal, one per line; end with Ctrl-D\n");
    }
    std::ios::sync_with_stdio(false);
    auto items = read_inputs(std::cin);
    if (std::cin.bad()) throw std::runtime_error("map: reading the input from stdin failed");
    return items;
  }
  std::error_code ec;
  auto st = fs::status(input, ec);
  if (!fs::exists(st)) {
    throw usage_error(fmt::format("map: cannot open input file '{}': no such file; give an "
                                  "existing file, or '-' (the default) for stdin",
                                  input));
  }
  if (fs::is_directory(st)) {
    throw usage_error(fmt::format("map: input '{}' is a directory; give a file", input));
  }
  errno = 0;
  std::ifstream in(input, std::ios::binary);
  if (!in) {
    const int e = errno;
    throw usage_error(fmt::format("map: cannot read input file '{}': {}", input,
                                  e != 0 ? std::strerror(e) : "unreadable"));
  }
  auto items = read_inputs(in);
  if (in.bad()) throw std::runtime_error(fmt::format("map: reading '{}' failed", input));
  return items;
}

void check_target_format(const std::string& target) {
  auto colon = target.find(':');
  if (colon == std::string::npos || !identifier_path(target.substr(0, colon)) ||
      !identifier_path(target.substr(colon + 1))) {
    throw usage_error(fmt::format(
        "map: bad target '{}': expected module:function, e.g. mymodule:process or "
        "package.module:Class.method (the module is imported from the current directory or a "
        "--path folder)",
        target));
  }
}

std::string shown(const input_item& it) {
  bool cut = false;
  std::string t = head_of(it, cut);
  return (it.utf8 ? t : value(isola::bytes{t}).repr()) + (cut ? "..." : "");
}

std::string quoted(const input_item& it) {
  bool cut = false;
  std::string t = head_of(it, cut);
  return (it.utf8 ? value(t).repr() : value(isola::bytes{t}).repr()) + (cut ? "..." : "");
}

isola::list lines_of(const std::vector<input_item>& items, std::size_t first, std::size_t count) {
  isola::list lines;
  lines.items.reserve(count);
  for (std::size_t i = first; i < first + count; ++i) {
    const auto& it = items[i];
    if (it.utf8) {
      lines.items.emplace_back(it.text);
    } else {
      lines.items.emplace_back(isola::bytes{it.text});  // parse() reports the bad byte
    }
  }
  return lines;
}

}  // namespace isola::cli
