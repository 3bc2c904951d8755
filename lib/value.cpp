// isola::value: accessors, repr and big-int formatting (pure C++, no Python needed).
#include <isola/value.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace isola {

std::string_view kind_name(kind k) noexcept {
  switch (k) {
    case kind::none: return "None";
    case kind::boolean: return "bool";
    case kind::integer: return "int";
    case kind::big_integer: return "int";
    case kind::floating: return "float";
    case kind::str: return "str";
    case kind::bytes: return "bytes";
    case kind::tuple: return "tuple";
    case kind::list: return "list";
    case kind::dict: return "dict";
  }
  return "?";
}

std::string big_int::to_decimal() const {
  // Schoolbook base conversion on 32-bit limbs: quadratic, fine for display.
  bool negative = !hex.empty() && hex[0] == '-';
  std::string_view digits = std::string_view(hex).substr(negative ? 1 : 0);
  std::vector<std::uint32_t> limbs;  // base 1e9, little-endian
  for (char c : digits) {
    std::uint64_t d = (c >= '0' && c <= '9') ? c - '0' : (c | 0x20) - 'a' + 10;
    std::uint64_t carry = d;
    for (auto& limb : limbs) {
      std::uint64_t cur = static_cast<std::uint64_t>(limb) * 16 + carry;
      limb = static_cast<std::uint32_t>(cur % 1000000000u);
      carry = cur / 1000000000u;
    }
    while (carry != 0) {
      limbs.push_back(static_cast<std::uint32_t>(carry % 1000000000u));
      carry /= 1000000000u;
    }
  }
  if (limbs.empty()) return "0";
  std::string out = negative ? "-" : "";
  out += std::to_string(limbs.back());
  for (auto it = limbs.rbegin() + 1; it != limbs.rend(); ++it) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%09u", *it);
    out += buf;
  }
  return out;
}

namespace {
[[noreturn]] void wrong_type(kind held, std::string_view wanted) {
  throw std::invalid_argument("isola::value holds " + std::string(kind_name(held)) +
                              ", not " + std::string(wanted));
}
}  // namespace

bool value::as_bool() const {
  if (auto* b = std::get_if<bool>(&v_)) return *b;
  wrong_type(type(), "bool");
}
std::int64_t value::as_int() const {
  if (auto* i = std::get_if<std::int64_t>(&v_)) return *i;
  if (auto* b = std::get_if<big_int>(&v_)) {
    throw std::out_of_range("int " + b->to_decimal() + " does not fit in 64 bits");
  }
  wrong_type(type(), "int");
}
double value::as_float() const {
  if (auto* d = std::get_if<double>(&v_)) return *d;
  if (auto* i = std::get_if<std::int64_t>(&v_)) return static_cast<double>(*i);
  wrong_type(type(), "float");
}
const std::string& value::as_str() const {
  if (auto* s = std::get_if<std::string>(&v_)) return *s;
  wrong_type(type(), "str");
}
const bytes& value::as_bytes() const {
  if (auto* b = std::get_if<bytes>(&v_)) return *b;
  wrong_type(type(), "bytes");
}
const tuple& value::as_tuple() const {
  if (auto* t = std::get_if<tuple>(&v_)) return *t;
  wrong_type(type(), "tuple");
}
const list& value::as_list() const {
  if (auto* l = std::get_if<list>(&v_)) return *l;
  wrong_type(type(), "list");
}
const dict& value::as_dict() const {
  if (auto* d = std::get_if<dict>(&v_)) return *d;
  wrong_type(type(), "dict");
}

const value* value::find(const value& key) const {
  const auto* d = std::get_if<dict>(&v_);
  if (d == nullptr) return nullptr;
  for (const auto& [k, v] : d->items) {
    if (k == key) return &v;
  }
  return nullptr;
}

namespace {

void repr_str(std::string& out, std::string_view s, char quote_prefix) {
  if (quote_prefix) out += quote_prefix;
  char q = (s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos)
               ? '"'
               : '\'';
  out += q;
  for (unsigned char c : s) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c == static_cast<unsigned char>(q)) {
          out += '\\';
          out += static_cast<char>(c);
        } else if (c < 0x20 || c == 0x7f || (quote_prefix && c >= 0x80)) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);  // UTF-8 passes through for str
        }
    }
  }
  out += q;
}

// Python's repr(float): the shortest digits that round-trip, in fixed notation when the
// decimal exponent is -4 < decpt <= 16, else d.ddde+XX (at least two exponent digits).
void repr_float(std::string& out, double x) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  std::string_view s(buf, static_cast<std::size_t>(res.ptr - buf));
  if (!s.empty() && s.front() == '-') {
    out += '-';
    s.remove_prefix(1);
  }
  const auto e_pos = s.find('e');
  std::string digits;
  for (char c : s.substr(0, e_pos)) {
    if (c != '.') digits += c;
  }
  const int exp10 = std::stoi(std::string(s.substr(e_pos + 1)));
  const int decpt = exp10 + 1;
  const int n = static_cast<int>(digits.size());
  if (-4 < decpt && decpt <= 16) {
    if (decpt <= 0) {
      out += "0.";
      out.append(static_cast<std::size_t>(-decpt), '0');
      out += digits;
    } else if (decpt >= n) {
      out += digits;
      out.append(static_cast<std::size_t>(decpt - n), '0');
      out += ".0";
    } else {
      out += digits.substr(0, static_cast<std::size_t>(decpt));
      out += '.';
      out += digits.substr(static_cast<std::size_t>(decpt));
    }
    return;
  }
  out += digits[0];
  if (n > 1) {
    out += '.';
    out += digits.substr(1);
  }
  out += exp10 < 0 ? "e-" : "e+";
  const int a = exp10 < 0 ? -exp10 : exp10;
  if (a < 10) out += '0';
  out += std::to_string(a);
}

void repr_into(std::string& out, const value& v) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, none_t>) {
          out += "None";
        } else if constexpr (std::is_same_v<T, bool>) {
          out += x ? "True" : "False";
        } else if constexpr (std::is_same_v<T, std::int64_t>) {
          out += std::to_string(x);
        } else if constexpr (std::is_same_v<T, big_int>) {
          out += x.to_decimal();
        } else if constexpr (std::is_same_v<T, double>) {
          if (std::isnan(x)) {
            out += "nan";
          } else if (std::isinf(x)) {
            out += x > 0 ? "inf" : "-inf";
          } else {
            repr_float(out, x);
          }
        } else if constexpr (std::is_same_v<T, std::string>) {
          repr_str(out, x, 0);
        } else if constexpr (std::is_same_v<T, bytes>) {
          repr_str(out, x.data, 'b');
        } else if constexpr (std::is_same_v<T, tuple> || std::is_same_v<T, list>) {
          constexpr bool is_tuple = std::is_same_v<T, tuple>;
          out += is_tuple ? '(' : '[';
          for (std::size_t i = 0; i < x.items.size(); ++i) {
            if (i) out += ", ";
            repr_into(out, x.items[i]);
          }
          if (is_tuple && x.items.size() == 1) out += ',';
          out += is_tuple ? ')' : ']';
        } else if constexpr (std::is_same_v<T, dict>) {
          out += '{';
          for (std::size_t i = 0; i < x.items.size(); ++i) {
            if (i) out += ", ";
            repr_into(out, x.items[i].first);
            out += ": ";
            repr_into(out, x.items[i].second);
          }
          out += '}';
        }
      },
      v.data());
}

}  // namespace

std::string value::repr() const {
  std::string out;
  repr_into(out, *this);
  return out;
}

}  // namespace isola
