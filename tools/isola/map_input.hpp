// isola map's input: one Python literal per line, read from a file or stdin, and how an input
// is shown in messages. Parsing the literals happens in the interpreters (py/map_helper.py).
#pragma once

#include <isola/value.hpp>

#include <cstddef>
#include <istream>
#include <string>
#include <string_view>
#include <vector>

namespace isola::cli {

/// One non-blank input line.
struct input_item {
  std::size_t line = 0;  ///< 1-based line number in the input
  std::string text;      ///< without surrounding whitespace
  bool utf8 = true;
};

/// Whether s is well-formed UTF-8 (no overlong forms, surrogates or values past U+10FFFF).
bool valid_utf8(std::string_view s);

/// The non-blank lines of in.
std::vector<input_item> read_inputs(std::istream& in);
/// The inputs of a file, or of stdin for "-". Throws usage_error for a file that is missing,
/// a directory or unreadable.
std::vector<input_item> load_inputs(const std::string& input);

/// Throws usage_error unless target is module:function (dotted names on both sides).
void check_target_format(const std::string& target);

/// The input as typed (a call's argument: "f(42)"), bytes that are not UTF-8 escaped, cut
/// after max_shown bytes.
std::string shown(const input_item& it);
/// The input quoted as a Python string (or bytes) literal, for "cannot parse '...'".
std::string quoted(const input_item& it);

/// Inputs [first, first + count) as the list of str (bytes when not UTF-8) a task gets.
isola::list lines_of(const std::vector<input_item>& items, std::size_t first, std::size_t count);

}  // namespace isola::cli
