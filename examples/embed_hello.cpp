// The smallest useful embedding: start the runtime, make two isolated interpreters, run code in
// each, call a function with arguments, and catch a Python exception.
#include <isola/isola.hpp>

#include <cstdio>

int main() {
  isola::runtime rt;  // owns CPython for the whole program

  isola::interpreter a, b;  // two interpreters, each with its own GIL
  a.exec("greeting = 'hello from interpreter ' + str(__import__('isola').interpreter_id())");
  b.set_global("greeting", "b has its own globals");

  std::printf("%s\n", a.get_global("greeting").as_str().c_str());
  std::printf("%s\n", b.get_global("greeting").as_str().c_str());

  isola::value total = a.call("builtins:sum", isola::make_list(1, 2, 3, 4));
  std::printf("sum = %lld\n", static_cast<long long>(total.as_int()));

  try {
    b.eval("1 / 0");
  } catch (const isola::python_error& e) {
    std::printf("caught %s: %s\n", e.type_name().c_str(), e.message().c_str());
  }
}  // interpreters end (newest first), then the runtime finalises CPython
