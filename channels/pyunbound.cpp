// Unbound items: the wrapper a bound item travels in, and the names of the modes.
#include "channels/pyunbound.hpp"

#include "channels/pybuffer.hpp"
#include "channels/pychannel.hpp"
#include "lib/py.hpp"
#include "lib/state.hpp"

#include <memory>
#include <mutex>

namespace isola::detail {
namespace {

/// A bound item: the message, the interpreter that put it and the mode. It travels as the
/// source of an empty shared_buffer, so the channel core and C++ receivers carry it like any
/// buffer.
class bound_item final : public buffer_source {
 public:
  bound_item(std::weak_ptr<interp_state> origin, int mode, message m) noexcept
      : origin_(std::move(origin)), mode_(mode), inner_(std::move(m)) {}
  std::span<const std::byte> bytes() const noexcept override { return {}; }

  bool origin_ended() const {
    auto s = origin_.lock();
    if (!s) return true;
    std::lock_guard lock(s->mu);
    return s->phase == interp_phase::closed;
  }
  int mode() const noexcept { return mode_; }
  const message& inner() const noexcept { return inner_; }

 private:
  std::weak_ptr<interp_state> origin_;
  int mode_;
  message inner_;
};

// The names, as CPython's concurrent.interpreters._crossinterp defines them.
constexpr const char* unbound_code = R"(
class UnboundItem:
    """Represents a channel item no longer bound to an interpreter.

    An item is unbound when the interpreter that put it in the channel (with
    unbounditems=UNBOUND) has ended: get() then returns isola.UNBOUND in its place.
    """

    __slots__ = ()

    def __new__(cls):
        raise Exception('use isola.UNBOUND')

    def __repr__(self):
        return 'isola.UNBOUND'


UnboundItem.__module__ = 'isola'
UNBOUND = object.__new__(UnboundItem)
UNBOUND_ERROR = object()
UNBOUND_REMOVE = object()


class ItemInterpreterDestroyed(QueueError):
    """Raised from get() and get_nowait() for an item put with unbounditems=UNBOUND_ERROR
    once the interpreter that put it has ended."""


ItemInterpreterDestroyed.__module__ = 'isola'
)";

}  // namespace

int make_unbound_names(PyObject* module) {
  PyObject* dict = PyModule_GetDict(module);  // borrowed
  if (PyDict_GetItemString(dict, "UNBOUND") != nullptr &&
      PyDict_GetItemString(dict, "ItemInterpreterDestroyed") != nullptr) {
    return 0;
  }
  py::object r = py::steal(PyRun_String(unbound_code, Py_file_input, dict, dict));
  return r ? 0 : -1;
}

PyObject* unbound_object(PyObject* module, int mode) {
  switch (mode) {
    case unbound_remove: return PyObject_GetAttrString(module, "UNBOUND_REMOVE");
    case unbound_error: return PyObject_GetAttrString(module, "UNBOUND_ERROR");
    case unbound_replace: return PyObject_GetAttrString(module, "UNBOUND");
    default: Py_RETURN_NONE;
  }
}

bool parse_unbound(PyObject* module, PyObject* arg, int dflt, int& out) {
  if (arg == nullptr || arg == Py_None) {
    out = dflt;
    return true;
  }
  for (int mode : {unbound_replace, unbound_error, unbound_remove}) {
    py::object o = py::steal(unbound_object(module, mode));
    if (!o) return false;
    if (o.get() == arg) {
      out = mode;
      return true;
    }
  }
  PyErr_Format(PyExc_NotImplementedError, "unsupported unbound replacement op %R", arg);
  return false;
}

void bind_to_current(message& m, int mode) {
  if (mode == unbound_keep) return;
  auto origin = find_interp(PyInterpreterState_GetID(PyInterpreterState_Get()));
  if (!origin) return;  // not an interpreter isola runs: it never ends while isola looks
  m = message(shared_buffer(
      std::make_shared<bound_item>(std::weak_ptr<interp_state>(origin), mode, std::move(m))));
}

PyObject* from_bound(PyObject* module, const message& m, bool& bound, bool& removed) {
  bound = removed = false;
  const shared_buffer* b = m.as_buffer();
  if (b == nullptr) return nullptr;
  const auto* item = dynamic_cast<const bound_item*>(b->source().get());
  if (item == nullptr) return nullptr;
  bound = true;
  if (!item->origin_ended()) return from_message(module, item->inner());
  switch (item->mode()) {
    case unbound_replace: return unbound_object(module, unbound_replace);
    case unbound_error: {
      py::object exc = py::steal(PyObject_GetAttrString(module, "ItemInterpreterDestroyed"));
      if (exc) PyErr_SetString(exc.get(), "item's original interpreter destroyed");
      return nullptr;
    }
    default:
      removed = true;
      ++unbound_removed_count;
      Py_RETURN_NONE;
  }
}

}  // namespace isola::detail
