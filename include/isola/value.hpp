// isola::value: the data that crosses between C++ and interpreters. It is owned by C++, so it
// outlives the interpreter it came from; converting it to Python makes new objects there.
#pragma once

#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace isola {

class value;

/// Python's None.
struct none_t {
  friend bool operator==(none_t, none_t) noexcept { return true; }
};
inline constexpr none_t none{};

/// An int outside the 64-bit range, kept exactly as sign and hexadecimal digits
/// ("-1f" is -31). Hex rather than decimal because CPython limits int<->decimal str
/// conversions to 4300 digits, and power-of-two bases are exempt.
struct big_int {
  std::string hex;  ///< optional '-' then lowercase hex digits, no "0x", no leading zeros
  std::string to_decimal() const;
  friend bool operator==(const big_int&, const big_int&) = default;
};

/// Python bytes: raw octets.
struct bytes {
  std::string data;
  friend bool operator==(const bytes&, const bytes&) = default;
};

struct tuple {
  std::vector<value> items;
  friend bool operator==(const tuple&, const tuple&);
};
struct list {
  std::vector<value> items;
  friend bool operator==(const list&, const list&);
};
/// A dict keeps insertion order, like Python's. Keys are values; converting to Python fails
/// with TypeError if a key is unhashable there (a list, say).
struct dict {
  std::vector<std::pair<value, value>> items;
  friend bool operator==(const dict&, const dict&);
};

/// Which of Python's types a value holds.
enum class kind { none, boolean, integer, big_integer, floating, str, bytes, tuple, list, dict };
std::string_view kind_name(kind k) noexcept;

/// A Python value copied into C++: None, bool, int, float, str (UTF-8; lone surrogates are kept
/// with the "surrogatepass" scheme), bytes, tuple, list, dict. Other Python types are refused
/// with TypeError naming the type; structures nested deeper than max_depth or cyclic ones are
/// refused with ValueError, never a stack overflow. (A value built by hand in C++ is not
/// depth-checked until it is converted; copying or destroying one nested thousands of levels
/// deep recurses that deep: 10 000 levels overflow an 8 MB stack in an unoptimised ASan build.)
class value {
 public:
  static constexpr int max_depth = 512;

  using storage = std::variant<none_t, bool, std::int64_t, big_int, double, std::string,
                               isola::bytes, isola::tuple, isola::list, isola::dict>;

  value() noexcept : v_(none) {}
  value(none_t) noexcept : v_(none) {}
  value(bool b) noexcept : v_(b) {}
  template <std::integral I>
    requires(!std::same_as<I, bool> && !std::same_as<I, char>)
  value(I i);
  value(big_int b) : v_(std::move(b)) {}
  value(double d) noexcept : v_(d) {}
  value(float d) noexcept : v_(static_cast<double>(d)) {}
  value(std::string s) : v_(std::move(s)) {}
  value(std::string_view s) : v_(std::string(s)) {}
  value(const char* s) : v_(std::string(s)) {}
  value(isola::bytes b) : v_(std::move(b)) {}
  value(isola::tuple t) : v_(std::move(t)) {}
  value(isola::list l) : v_(std::move(l)) {}
  value(isola::dict d) : v_(std::move(d)) {}

  kind type() const noexcept { return static_cast<kind>(v_.index()); }
  bool is_none() const noexcept { return type() == kind::none; }
  bool is_int() const noexcept { return type() == kind::integer || type() == kind::big_integer; }

  // Checked accessors: throw std::invalid_argument naming the held and wanted types.
  bool as_bool() const;
  std::int64_t as_int() const;  ///< also throws std::out_of_range for a big_int
  double as_float() const;      ///< int values are widened
  const std::string& as_str() const;
  const isola::bytes& as_bytes() const;
  const isola::tuple& as_tuple() const;
  const isola::list& as_list() const;
  const isola::dict& as_dict() const;

  /// The item stored under key in a dict value, or nullptr.
  const value* find(const value& key) const;

  const storage& data() const noexcept { return v_; }
  storage& data() noexcept { return v_; }

  /// Python-style repr: None, True, 42, 1.5, 'text', b'\x00', (1,), [1, 2], {'a': 1}.
  std::string repr() const;

  friend bool operator==(const value& a, const value& b) { return a.v_ == b.v_; }

 private:
  storage v_;
};

template <std::integral I>
  requires(!std::same_as<I, bool> && !std::same_as<I, char>)
value::value(I i) : v_(std::in_place_index<2>, static_cast<std::int64_t>(i)) {
  // Constructed as an int64 straight away (no None first, then a variant assignment).
  if constexpr (std::is_unsigned_v<I> && sizeof(I) >= sizeof(std::int64_t)) {
    if (i > static_cast<std::uint64_t>(INT64_MAX)) {
      static constexpr char digits[] = "0123456789abcdef";
      std::string hex;
      for (std::uint64_t u = i; u != 0; u >>= 4) hex.insert(hex.begin(), digits[u & 15]);
      v_ = big_int{std::move(hex)};
    }
  }
}

inline bool operator==(const tuple& a, const tuple& b) { return a.items == b.items; }
inline bool operator==(const list& a, const list& b) { return a.items == b.items; }
inline bool operator==(const dict& a, const dict& b) { return a.items == b.items; }

/// Builds a vector of values without copying them (an initializer_list would copy each).
template <typename... Args>
std::vector<value> make_values(Args&&... args) {
  std::vector<value> v;
  v.reserve(sizeof...(Args));
  (v.emplace_back(std::forward<Args>(args)), ...);
  return v;
}

/// Convenience builders: isola::make_list(1, "two", 3.0).
template <typename... Args>
isola::list make_list(Args&&... args) {
  return isola::list{make_values(std::forward<Args>(args)...)};
}
template <typename... Args>
isola::tuple make_tuple(Args&&... args) {
  return isola::tuple{make_values(std::forward<Args>(args)...)};
}

}  // namespace isola
