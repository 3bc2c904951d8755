// Shared immortal values (include/isola/shared.hpp): published once, read by every interpreter
// as the same objects.
//
// How a value is published:
// 1. In the publishing interpreter (its GIL held), the object graph is checked (types, cycles,
//    depth, size; errors name the path to the offending part) and written into a compact byte
//    stream. Nothing of the publisher's is kept: its objects may change or go away after.
// 2. With the main interpreter's GIL (isola::attach), the stream is read into new objects made
//    by the main interpreter's allocator: only the main interpreter's obmalloc state lives as
//    long as the runtime (an own-GIL interpreter's arenas go when it ends, and freeing a block
//    through another interpreter's allocator corrupts it).
// 3. Every object is finished before anyone can see it: str and bytes hashed, str given its
//    UTF-8 form and marked interned (so interning it anywhere returns at once instead of
//    writing its state; see finish_str), then untracked by the GC and made immortal (reference
//    count _Py_IMMORTAL_REFCNT, which Py_INCREF and Py_DECREF leave alone). Readers then never
//    write to them.
// 4. Mappings become isola.SharedMapping: a static type (one type object for every
//    interpreter, itself made immortal with everything in its dict) over a C++ hash table of
//    the immortal keys and values. It has no GC, no weak references, no __dict__, cannot be
//    subclassed or instantiated from Python, and refuses writes: no path through a shared
//    value reaches a mutable object.
#include <isola/shared.hpp>

#include <isola/attach.hpp>
#include <isola/error.hpp>

#include "lib/module.hpp"
#include "lib/py.hpp"
#include "lib/pyexec.hpp"
#include "lib/state.hpp"
#include "lib/value_codec.hpp"

#include <atomic>
#include <cstring>
#include <optional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace isola::detail {
namespace {

constexpr int max_depth = 2000;  // as marshal's: both recursions stay far from any thread's stack limit

// ---- the C++ hash table behind a shared mapping ---------------------------------------------

/// Open addressing, linear probing, power-of-two size, at most half full. Keys and values are
/// immortal objects of the main interpreter; the table is never changed after it is built.
struct shared_table {
  struct slot {
    Py_hash_t hash = 0;
    PyObject* key = nullptr;  ///< nullptr: empty
    PyObject* value = nullptr;
  };
  std::vector<slot> slots;
  std::size_t size = 0;
  PyObject* keys = nullptr;    ///< a tuple, in insertion order (for iteration)
  PyObject* values = nullptr;  ///< a tuple, in the same order

  /// The slot of key (hash given), or nullptr; -1 with an exception set if comparing raised.
  int find(PyObject* key, Py_hash_t hash, const slot*& out) const {
    out = nullptr;
    if (slots.empty()) return 0;
    const std::size_t mask = slots.size() - 1;
    for (std::size_t i = static_cast<std::size_t>(hash) & mask;; i = (i + 1) & mask) {
      const slot& s = slots[i];
      if (s.key == nullptr) return 0;
      if (s.key == key) {
        out = &s;
        return 1;
      }
      if (s.hash != hash) continue;
      if (PyUnicode_CheckExact(key) && PyUnicode_CheckExact(s.key)) {
        // Both exact str: no user code can run.
        if (PyUnicode_GET_LENGTH(key) == PyUnicode_GET_LENGTH(s.key) &&
            PyUnicode_Compare(key, s.key) == 0) {
          out = &s;
          return 1;
        }
        continue;
      }
      const int eq = PyObject_RichCompareBool(s.key, key, Py_EQ);
      if (eq < 0) return -1;
      if (eq) {
        out = &s;
        return 1;
      }
    }
  }
};

// ---- isola.SharedMapping ------------------------------------------------------------------

struct mapping_object {
  PyObject_HEAD
  const shared_table* table;
};

const shared_table& table_of(PyObject* self) {
  return *reinterpret_cast<mapping_object*>(self)->table;
}

PyTypeObject mapping_type_storage{};  // filled by ready_type()

bool is_mapping(PyObject* o) { return Py_TYPE(o) == &mapping_type_storage; }

Py_ssize_t mapping_len(PyObject* self) { return static_cast<Py_ssize_t>(table_of(self).size); }

// The value for key, borrowed; nullptr with KeyError (or the comparison's exception) set, or
// nullptr without an exception when missing and `quiet`.
PyObject* lookup(PyObject* self, PyObject* key, bool quiet) {
  const Py_hash_t hash = PyObject_Hash(key);
  if (hash == -1) return nullptr;
  const shared_table::slot* s = nullptr;
  const int found = table_of(self).find(key, hash, s);
  if (found < 0) return nullptr;
  if (found == 0) {
    if (!quiet) PyErr_SetObject(PyExc_KeyError, key);
    return nullptr;
  }
  return s->value;
}

PyObject* mapping_subscript(PyObject* self, PyObject* key) {
  return Py_XNewRef(lookup(self, key, false));
}

int mapping_ass_subscript(PyObject* self, PyObject*, PyObject*) {
  PyErr_Format(PyExc_TypeError,
               "'%s' object does not support item assignment or deletion: shared values are "
               "read-only (copy() gives a dict you can change)",
               Py_TYPE(self)->tp_name);
  return -1;
}

int mapping_contains(PyObject* self, PyObject* key) {
  PyObject* v = lookup(self, key, true);
  if (v != nullptr) return 1;
  return PyErr_Occurred() ? -1 : 0;
}

PyObject* mapping_iter(PyObject* self) { return PyObject_GetIter(table_of(self).keys); }

PyObject* mapping_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 1 || nargs > 2) {
    PyErr_Format(PyExc_TypeError, "get expected 1 or 2 arguments, got %zd", nargs);
    return nullptr;
  }
  PyObject* v = lookup(self, args[0], true);
  if (v != nullptr) return Py_NewRef(v);
  if (PyErr_Occurred()) return nullptr;
  return Py_NewRef(nargs == 2 ? args[1] : Py_None);
}

// A new dict with the same items, owned by the calling interpreter.
PyObject* mapping_copy(PyObject* self, PyObject*) {
  const shared_table& t = table_of(self);
  py::object d = py::steal(PyDict_New());
  if (!d) return nullptr;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t.keys); ++i) {
    if (PyDict_SetItem(d.get(), PyTuple_GET_ITEM(t.keys, i), PyTuple_GET_ITEM(t.values, i)) <
        0) {
      return nullptr;
    }
  }
  return d.release();
}

// keys(), values(), items(): the views collections.abc gives any mapping (made in the calling
// interpreter, over this mapping: membership in keys() is a lookup).
PyObject* view_of(PyObject* self, const char* kind) {
  py::object abc = py::steal(PyImport_ImportModule("_collections_abc"));
  if (!abc) return nullptr;
  py::object cls = py::steal(PyObject_GetAttrString(abc.get(), kind));
  if (!cls) return nullptr;
  return PyObject_CallOneArg(cls.get(), self);
}
PyObject* mapping_keys(PyObject* self, PyObject*) { return view_of(self, "KeysView"); }
PyObject* mapping_values(PyObject* self, PyObject*) { return view_of(self, "ValuesView"); }
PyObject* mapping_items(PyObject* self, PyObject*) { return view_of(self, "ItemsView"); }

PyObject* mapping_repr(PyObject* self) {
  py::object d = py::steal(mapping_copy(self, nullptr));
  if (!d) return nullptr;
  return PyUnicode_FromFormat("isola.SharedMapping(%R)", d.get());
}

PyObject* mapping_richcompare(PyObject* self, PyObject* other, int op) {
  if ((op != Py_EQ && op != Py_NE) || !(PyDict_Check(other) || is_mapping(other))) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  const shared_table& t = table_of(self);
  bool equal = PyObject_Length(other) == static_cast<Py_ssize_t>(t.size);
  if (PyErr_Occurred()) return nullptr;
  for (Py_ssize_t i = 0; equal && i < PyTuple_GET_SIZE(t.keys); ++i) {
    PyObject* key = PyTuple_GET_ITEM(t.keys, i);
    py::object theirs = py::steal(PyObject_GetItem(other, key));
    if (!theirs) {
      if (!PyErr_ExceptionMatches(PyExc_KeyError)) return nullptr;
      PyErr_Clear();
      equal = false;
      break;
    }
    const int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(t.values, i), theirs.get(), Py_EQ);
    if (eq < 0) return nullptr;
    equal = eq != 0;
  }
  return PyBool_FromLong(op == Py_EQ ? equal : !equal);
}

PyMethodDef mapping_methods[] = {
    {"get", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(mapping_get)),
     METH_FASTCALL, "get(key, default=None)"},
    {"keys", mapping_keys, METH_NOARGS, "A view of the keys."},
    {"values", mapping_values, METH_NOARGS, "A view of the values."},
    {"items", mapping_items, METH_NOARGS, "A view of the (key, value) pairs."},
    {"copy", mapping_copy, METH_NOARGS, "A dict with the same items, yours to change."},
    {nullptr, nullptr, 0, nullptr}};

PyMappingMethods mapping_as_mapping = {mapping_len, mapping_subscript, mapping_ass_subscript};
PySequenceMethods mapping_as_sequence = {};

/// Makes the type ready in the main interpreter (GIL held), once, and immortal with
/// everything it refers to, so that every interpreter can use it without writing to it.
void immortalize(PyObject* o);

std::atomic<bool> type_is_ready{false};

bool ready_type() {
  if (type_is_ready.load(std::memory_order_acquire)) return true;
  PyTypeObject& t = mapping_type_storage;
  Py_SET_TYPE(&t, &PyType_Type);
  Py_SET_REFCNT(&t, _Py_IMMORTAL_REFCNT);
  t.tp_name = "isola.SharedMapping";
  t.tp_basicsize = sizeof(mapping_object);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION |
               Py_TPFLAGS_MAPPING;
  t.tp_doc =
      "A read-only mapping published with isola.share(): the same object in every "
      "interpreter. Reads like types.MappingProxyType; every write raises TypeError.";
  t.tp_as_mapping = &mapping_as_mapping;
  mapping_as_sequence.sq_contains = mapping_contains;
  t.tp_as_sequence = &mapping_as_sequence;
  t.tp_iter = mapping_iter;
  t.tp_methods = mapping_methods;
  t.tp_repr = mapping_repr;
  t.tp_richcompare = mapping_richcompare;
  t.tp_hash = PyObject_HashNotImplemented;
  if (PyType_Ready(&t) < 0) return false;
  // The type's version tag (its lookup caches' key) is set now, in the main interpreter, so
  // that no other interpreter's first lookup writes it.
  py::object probe = py::steal(PyObject_GetAttrString(reinterpret_cast<PyObject*>(&t), "get"));
  if (!probe) return false;
  immortalize(reinterpret_cast<PyObject*>(&t));
  PyObject* dict = t.tp_dict;
  immortalize(dict);
  PyObject* k = nullptr;
  PyObject* v = nullptr;
  for (Py_ssize_t pos = 0; PyDict_Next(dict, &pos, &k, &v);) {
    immortalize(k);
    immortalize(v);
  }
  if (t.tp_mro != nullptr) immortalize(t.tp_mro);
  if (t.tp_bases != nullptr) immortalize(t.tp_bases);
  type_is_ready.store(true, std::memory_order_release);
  return true;
}

// ---- making objects immortal ----------------------------------------------------------------

void immortalize(PyObject* o) {
  if (o == nullptr || _Py_IsImmortal(o)) return;
  if (PyObject_IS_GC(o) && PyObject_GC_IsTracked(o)) PyObject_GC_UnTrack(o);
  Py_SET_REFCNT(o, _Py_IMMORTAL_REFCNT);
}

// A str finished for sharing: hashed, given its UTF-8 form, marked interned and made immortal.
// False with an exception set.
// - Interning writes the str's state (and, on 3.13, the interned dict of whichever interpreter
//   does it); an interned str is left alone by every interpreter's PyUnicode_InternInPlace and
//   sys.intern (3.12 and 3.13 return at once when the state says interned). So the state is
//   set here to "interned, immortal" without entering the str in any interned dict: interning
//   one in the main interpreter's dict would cost about 35 bytes per str, for every str of a
//   table. sys.intern(s) then returns s itself in every interpreter.
// - An interpreter's finalization clears only the strings of its own interned dict, which
//   never holds these.
bool finish_str(PyObject* s) {
  if (PyUnicode_CHECK_INTERNED(s)) return true;  // a static singleton ('', 'a', ...)
  if (PyObject_Hash(s) == -1) return false;
  Py_ssize_t size = 0;
  if (PyUnicode_AsUTF8AndSize(s, &size) == nullptr) {
    // A lone surrogate has no UTF-8 form: nothing is cached, nothing will be written.
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return false;
    PyErr_Clear();
  }
  _PyASCIIObject_CAST(s)->state.interned = SSTATE_INTERNED_IMMORTAL;
  immortalize(s);
  return true;
}

// ---- the stream a value travels in -----------------------------------------------------------
//
// One tag byte per object, then its data: 'N' None, 'T'/'F' bool, 'i' int64, 'I' int of any
// size (length, then its hexadecimal text, "-0x1f"), 'f' double, 'c' complex (2 doubles),
// 's' str (kind 1/2/4, length, then the code units), 'b' bytes (length, data), 't' tuple
// (count, items), 'm' mapping (count, key and value of each item), 'x' an object shared already
// (its address: an isola.SharedMapping, kept as it is).

class stream_writer {
 public:
  explicit stream_writer(std::size_t max_bytes, bool lists_as_tuples)
      : max_bytes_(max_bytes), lists_as_tuples_(lists_as_tuples) {}

  /// Writes o; false with TypeError / ValueError / MemoryError set, naming the path.
  bool write(PyObject* o) { return put(o, 0); }
  std::string& data() noexcept { return out_; }
  std::size_t object_bytes() const noexcept { return bytes_; }

 private:
  template <typename T>
  void raw(const T& v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void size(std::size_t n) { raw(static_cast<std::uint64_t>(n)); }

  // The path to the part being written, for errors: obj, obj[3], obj['users'][3].
  std::string path() const {
    std::string p = "obj";
    for (const auto& step : path_) {
      if (step.key == nullptr) {
        p += '[' + std::to_string(step.index) + ']';
        continue;
      }
      py::object r = py::steal(PyObject_Repr(step.key));
      const char* s = r ? PyUnicode_AsUTF8(r.get()) : nullptr;
      if (s == nullptr) PyErr_Clear();
      p += '[';
      p += s != nullptr ? s : "?";
      p += ']';
    }
    return p;
  }
  bool fail(PyObject* type, const std::string& why) {
    const std::string p = path();
    PyErr_Format(type, "%s: %s", p.c_str(), why.c_str());
    return false;
  }
  bool count(std::size_t n) {
    bytes_ += n;
    if (max_bytes_ != 0 && bytes_ > max_bytes_) {
      PyErr_Format(PyExc_MemoryError,
                   "the value takes more than the %zu bytes shared values may take (at least "
                   "%zu bytes by the time %s was reached)",
                   max_bytes_, bytes_, path().c_str());
      return false;
    }
    return true;
  }

  bool put(PyObject* o, int depth) {
    if (depth > max_depth) {
      return fail(PyExc_ValueError,
                  "nested deeper than " + std::to_string(max_depth) + " levels");
    }
    if (o == Py_None) {
      out_ += 'N';
      return true;
    }
    if (PyBool_Check(o)) {
      out_ += o == Py_True ? 'T' : 'F';
      return true;
    }
    if (PyLong_CheckExact(o)) return put_int(o);
    if (PyFloat_CheckExact(o)) {
      out_ += 'f';
      raw(PyFloat_AS_DOUBLE(o));
      return count(sizeof(PyFloatObject));
    }
    if (PyComplex_CheckExact(o)) {
      out_ += 'c';
      raw(PyComplex_RealAsDouble(o));
      raw(PyComplex_ImagAsDouble(o));
      return count(sizeof(PyComplexObject));
    }
    if (PyUnicode_CheckExact(o)) {
      const int kind = PyUnicode_KIND(o);
      const Py_ssize_t n = PyUnicode_GET_LENGTH(o);
      out_ += 's';
      out_ += static_cast<char>(kind);
      size(static_cast<std::size_t>(n));
      out_.append(static_cast<const char*>(PyUnicode_DATA(o)),
                  static_cast<std::size_t>(n) * static_cast<std::size_t>(kind));
      // The object, its UTF-8 form (for non-ASCII) and the main interpreter's interned-dict
      // entry.
      return count(static_cast<std::size_t>(n) * (kind + (kind > 1 || !PyUnicode_IS_ASCII(o))) +
                   sizeof(PyCompactUnicodeObject) + 24);
    }
    if (PyBytes_CheckExact(o)) {
      out_ += 'b';
      size(static_cast<std::size_t>(PyBytes_GET_SIZE(o)));
      out_.append(PyBytes_AS_STRING(o), static_cast<std::size_t>(PyBytes_GET_SIZE(o)));
      return count(static_cast<std::size_t>(PyBytes_GET_SIZE(o)) + sizeof(PyBytesObject));
    }
    if (is_mapping(o)) {  // shared already: kept as it is
      out_ += 'x';
      raw(o);
      return true;
    }
    const bool tuple = PyTuple_CheckExact(o) || (lists_as_tuples_ && PyList_CheckExact(o));
    if (tuple || PyDict_CheckExact(o)) {
      for (PyObject* on_path : containers_) {
        if (on_path == o) {
          return fail(PyExc_TypeError,
                      "contains itself (a cycle); shared values must be trees of values");
        }
      }
      containers_.push_back(o);
      const bool ok = tuple ? put_sequence(o, depth) : put_dict(o, depth);
      containers_.pop_back();
      return ok;
    }
    if (PyList_Check(o) || PyAnySet_Check(o)) {
      return fail(PyExc_TypeError,
                  std::string(Py_TYPE(o)->tp_name) + " is not shareable; use a tuple" +
                      (PyFrozenSet_Check(o)
                           ? " (a frozenset takes weak references, which would write into "
                             "the shared object)"
                           : ""));
    }
    return fail(PyExc_TypeError,
                std::string(Py_TYPE(o)->tp_name) +
                    " is not shareable; share None, bool, int, float, complex, str, bytes, "
                    "tuple and dict (exact types, not subclasses)");
  }

  bool put_int(PyObject* o) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return false;
    if (overflow == 0) {
      out_ += 'i';
      raw(static_cast<std::int64_t>(v));
      return count(32);
    }
    // Any size: as hexadecimal text ("-0x1f"), which has no digit limit (decimal has 4300) and
    // needs no keyword argument (CPython 3.12.0-3.12.3 crash at exit after an isolated
    // interpreter passed one to a C function: gh-119213).
    py::object hex = py::steal(PyNumber_ToBase(o, 16));
    if (!hex) return false;
    Py_ssize_t n = 0;
    const char* text = PyUnicode_AsUTF8AndSize(hex.get(), &n);
    if (text == nullptr) return false;
    out_ += 'I';
    size(static_cast<std::size_t>(n));
    out_.append(text, static_cast<std::size_t>(n));
    return count(static_cast<std::size_t>(n) / 2 + 32);
  }

  bool put_sequence(PyObject* o, int depth) {
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
    out_ += 't';
    size(static_cast<std::size_t>(n));
    if (!count(sizeof(PyTupleObject) + static_cast<std::size_t>(n) * sizeof(PyObject*))) {
      return false;
    }
    for (Py_ssize_t i = 0; i < n; ++i) {
      path_.push_back({nullptr, i});
      // A list's items are re-read each time: it cannot change under us (the GIL is held and
      // nothing here runs Python code), but its length is what it is now.
      const bool ok = i < PySequence_Fast_GET_SIZE(o) && put(PySequence_Fast_GET_ITEM(o, i), depth + 1);
      path_.pop_back();
      if (!ok) return false;
    }
    return true;
  }

  bool put_dict(PyObject* o, int depth) {
    out_ += 'm';
    size(static_cast<std::size_t>(PyDict_GET_SIZE(o)));
    if (!count(static_cast<std::size_t>(PyDict_GET_SIZE(o)) * 4 * sizeof(void*) + 64)) {
      return false;
    }
    PyObject* k = nullptr;
    PyObject* v = nullptr;
    for (Py_ssize_t pos = 0; PyDict_Next(o, &pos, &k, &v);) {
      path_.push_back({k, 0});
      bool ok = !is_mapping(k) ||
                fail(PyExc_TypeError, "a mapping cannot be a key (it is not hashable)");
      ok = ok && put(k, depth + 1) && put(v, depth + 1);
      path_.pop_back();
      if (!ok) return false;
    }
    return true;
  }

  struct step {
    PyObject* key;  ///< nullptr for a sequence index
    Py_ssize_t index;
  };
  std::string out_;
  std::size_t bytes_ = 0;
  const std::size_t max_bytes_;
  const bool lists_as_tuples_;
  std::vector<step> path_;
  std::vector<PyObject*> containers_;
};

// Reads a stream into finished immortal objects of the main interpreter (its GIL held). The
// stream was written by stream_writer in this process.
class stream_reader {
 public:
  explicit stream_reader(const std::string& s) : p_(s.data()) {}

  /// A new (immortal) object, or nullptr with an exception set.
  PyObject* read() { return get(); }

 private:
  template <typename T>
  T raw() {
    T v;
    std::memcpy(&v, p_, sizeof v);
    p_ += sizeof v;
    return v;
  }
  std::size_t size() { return static_cast<std::size_t>(raw<std::uint64_t>()); }

  PyObject* done(PyObject* o) {
    immortalize(o);
    return o;
  }

  PyObject* get() {
    const char tag = *p_++;
    switch (tag) {
      case 'N': return Py_None;
      case 'T': return Py_True;
      case 'F': return Py_False;
      case 'i': {
        PyObject* o = PyLong_FromLongLong(raw<std::int64_t>());
        return o != nullptr ? done(o) : nullptr;
      }
      case 'I': {
        const std::size_t n = size();
        const std::string text(p_, n);  // "-0x1f": base 0 reads the prefix
        p_ += n;
        PyObject* o = PyLong_FromString(text.c_str(), nullptr, 0);
        return o != nullptr ? done(o) : nullptr;
      }
      case 'f': {
        PyObject* o = PyFloat_FromDouble(raw<double>());
        return o != nullptr ? done(o) : nullptr;
      }
      case 'c': {
        const double re = raw<double>();
        const double im = raw<double>();
        PyObject* o = PyComplex_FromDoubles(re, im);
        return o != nullptr ? done(o) : nullptr;
      }
      case 's': {
        const int kind = *p_++;
        const std::size_t n = size();
        PyObject* o = PyUnicode_FromKindAndData(kind, p_, static_cast<Py_ssize_t>(n));
        p_ += n * static_cast<std::size_t>(kind);
        if (o == nullptr || !finish_str(o)) return nullptr;
        return o;
      }
      case 'b': {
        const std::size_t n = size();
        PyObject* o = PyBytes_FromStringAndSize(p_, static_cast<Py_ssize_t>(n));
        p_ += n;
        if (o == nullptr) return nullptr;
        if (PyObject_Hash(o) == -1) return nullptr;  // bytes cache their hash
        return done(o);
      }
      case 't': {
        const std::size_t n = size();
        PyObject* t = PyTuple_New(static_cast<Py_ssize_t>(n));
        if (t == nullptr) return nullptr;
        for (std::size_t i = 0; i < n; ++i) {
          PyObject* item = get();
          if (item == nullptr) return nullptr;  // t stays allocated: the publication fails
          PyTuple_SET_ITEM(t, static_cast<Py_ssize_t>(i), item);
        }
        return done(t);
      }
      case 'm': return get_mapping();
      case 'x': return raw<PyObject*>();
    }
    PyErr_Format(PyExc_SystemError, "isola: unknown tag %d in a shared value's stream", tag);
    return nullptr;
  }

  PyObject* get_mapping() {
    const std::size_t n = size();
    auto table = std::make_unique<shared_table>();
    std::size_t cap = 8;
    while (cap < n * 2) cap *= 2;
    table->slots.resize(cap);
    table->keys = PyTuple_New(static_cast<Py_ssize_t>(n));
    table->values = PyTuple_New(static_cast<Py_ssize_t>(n));
    if (table->keys == nullptr || table->values == nullptr) return nullptr;
    for (std::size_t i = 0; i < n; ++i) {
      PyObject* k = get();
      if (k == nullptr) return nullptr;
      PyObject* v = get();
      if (v == nullptr) return nullptr;
      const Py_hash_t h = PyObject_Hash(k);
      if (h == -1) return nullptr;
      PyTuple_SET_ITEM(table->keys, static_cast<Py_ssize_t>(i), k);
      PyTuple_SET_ITEM(table->values, static_cast<Py_ssize_t>(i), v);
      const std::size_t mask = cap - 1;
      std::size_t j = static_cast<std::size_t>(h) & mask;
      while (table->slots[j].key != nullptr) j = (j + 1) & mask;
      table->slots[j] = {h, k, v};
    }
    table->size = n;
    immortalize(table->keys);
    immortalize(table->values);
    auto* m = PyObject_New(mapping_object, &mapping_type_storage);
    if (m == nullptr) return nullptr;
    m->table = table.get();
    tables().push_back(std::move(table));
    return done(reinterpret_cast<PyObject*>(m));
  }

 public:
  /// Every table ever made: they live as long as the objects that point at them.
  static std::vector<std::unique_ptr<shared_table>>& tables() {
    static auto* t = new std::vector<std::unique_ptr<shared_table>>;
    return *t;
  }

 private:
  const char* p_;
};

// ---- the registry -----------------------------------------------------------------------------

/// Published values by name. Process-wide on purpose: these PyObject* are immortal objects of
/// the main interpreter, the one kind of Python object isola keeps outside any interpreter.
struct registry_t {
  std::mutex mu;
  std::vector<std::string> order;
  std::map<std::string, PyObject*, std::less<>> by_name;
};

registry_t& registry() {
  static auto* r = new registry_t;  // leaked: read while interpreters end
  return *r;
}

PyObject* find_shared(std::string_view name) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  auto it = r.by_name.find(name);
  return it == r.by_name.end() ? nullptr : it->second;
}

/// With the main interpreter's GIL: reads the stream and registers the result. false with an
/// exception set (in the main interpreter).
bool publish_locked(const std::string& name, const std::string& stream, bool replace) {
  if (!ready_type()) return false;
  {
    auto& r = registry();
    std::lock_guard lock(r.mu);
    if (!replace && r.by_name.count(name) != 0) {
      PyErr_Format(PyExc_ValueError,
                   "a value is shared under the name '%s' already; pass replace=True to "
                   "replace it",
                   name.c_str());
      return false;
    }
  }
  stream_reader reader(stream);
  PyObject* root = reader.read();
  if (root == nullptr) return false;
  auto& r = registry();
  std::lock_guard lock(r.mu);
  if (!replace && r.by_name.count(name) != 0) {  // published meanwhile by another thread
    PyErr_Format(PyExc_ValueError,
                 "a value is shared under the name '%s' already; pass replace=True to replace "
                 "it",
                 name.c_str());
    return false;
  }
  auto [it, fresh] = r.by_name.insert_or_assign(name, root);
  if (fresh) r.order.push_back(name);
  return true;
}

/// Outcome of a publication made in the main interpreter for another one: the exception's
/// type name and message, to raise again where the call came from.
struct failure {
  std::string type;
  std::string message;
};

/// Publishes the stream from any thread: attaches to the main interpreter for the time it
/// takes. A failure there comes back as type + message.
std::optional<failure> publish(const std::string& name, const std::string& stream, bool replace) {
  auto main = runtime().main;
  if (!main) throw error(errc::no_runtime, "isola::share: no isola::runtime");
  auto guard = attach(interpreter_handle(main));
  guard.value();  // throws isola::error if the main interpreter cannot be attached
  if (publish_locked(name, stream, replace)) return std::nullopt;
  PyObject* exc = PyErr_GetRaisedException();
  failure f{Py_TYPE(exc)->tp_name, ""};
  py::object s = py::steal(PyObject_Str(exc));
  if (s) f.message = PyUnicode_AsUTF8(s.get());
  PyErr_Clear();
  Py_DECREF(exc);
  return f;
}

// ---- the Python functions --------------------------------------------------------------------

PyObject* py_share(PyObject*, PyObject* args, PyObject* kwds) {
  static const char* kwlist[] = {"name", "obj", "replace", "max_bytes", nullptr};
  const char* name = nullptr;
  PyObject* obj = nullptr;
  int replace = 0;
  Py_ssize_t max_bytes = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "sO|$pn:share", const_cast<char**>(kwlist),
                                   &name, &obj, &replace, &max_bytes)) {
    return nullptr;
  }
  if (*name == '\0') {
    PyErr_SetString(PyExc_ValueError, "isola.share: the name must not be empty");
    return nullptr;
  }
  if (max_bytes < 0) {
    PyErr_SetString(PyExc_ValueError, "isola.share: max_bytes must be >= 0 (0: no limit)");
    return nullptr;
  }
  stream_writer w(static_cast<std::size_t>(max_bytes), false);
  if (!w.write(obj)) return nullptr;
  std::optional<failure> f;
  std::string what;
  Py_BEGIN_ALLOW_THREADS
  try {
    f = publish(name, w.data(), replace != 0);
  } catch (const std::exception& e) {
    what = e.what();
  }
  Py_END_ALLOW_THREADS
  if (!what.empty()) {
    PyErr_Format(PyExc_RuntimeError, "isola.share: %s", what.c_str());
    return nullptr;
  }
  if (f) {
    PyObject* type = PyExc_RuntimeError;
    if (f->type == "ValueError") type = PyExc_ValueError;
    if (f->type == "MemoryError") type = PyExc_MemoryError;
    if (f->type == "TypeError") type = PyExc_TypeError;
    PyErr_SetString(type, f->message.c_str());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* py_shared(PyObject*, PyObject* name) {
  if (!PyUnicode_Check(name)) {
    PyErr_Format(PyExc_TypeError, "isola.shared: name must be a str, not %s",
                 Py_TYPE(name)->tp_name);
    return nullptr;
  }
  const char* n = PyUnicode_AsUTF8(name);
  if (n == nullptr) return nullptr;
  PyObject* o = find_shared(n);
  if (o == nullptr) {
    PyErr_Format(PyExc_KeyError, "no value is shared under the name %R (isola.shared_names() "
                 "lists them)", name);
    return nullptr;
  }
  return o;  // immortal: a new reference without touching its count
}

PyObject* py_shared_names(PyObject*, PyObject*) {
  std::vector<std::string> names = shared_names();
  py::object l = py::steal(PyList_New(0));
  if (!l) return nullptr;
  for (const auto& n : names) {
    py::object s = py::steal(PyUnicode_FromStringAndSize(n.data(), static_cast<Py_ssize_t>(n.size())));
    if (!s || PyList_Append(l.get(), s.get()) < 0) return nullptr;
  }
  return l.release();
}

PyMethodDef shared_methods[] = {
    {"share", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_share)),
     METH_VARARGS | METH_KEYWORDS,
     "share(name, obj, *, replace=False, max_bytes=0)\n\nPublishes a deep, immutable copy of "
     "obj under name, for every interpreter of the process: isola.shared(name) then returns "
     "the same objects everywhere, without copying. obj may hold None, bool, int, float, "
     "complex, str, bytes, tuples and dicts (which become read-only isola.SharedMapping); the "
     "copy lives until the runtime ends."},
    {"shared", py_shared, METH_O,
     "shared(name) -> object\n\nThe value published under name (KeyError if none)."},
    {"shared_names", py_shared_names, METH_NOARGS,
     "shared_names() -> list[str]\n\nThe names values are published under."},
    {nullptr, nullptr, 0, nullptr}};

int make_mapping_type(PyObject* m) {
  if (!type_is_ready.load(std::memory_order_acquire)) {
    // Nothing published yet: the type is made ready in the main interpreter first.
    auto main = runtime().main;
    if (!main) {
      PyErr_SetString(PyExc_RuntimeError, "isola.SharedMapping: no isola runtime");
      return -1;
    }
    bool ok = false;
    Py_BEGIN_ALLOW_THREADS
    {
      auto guard = attach(interpreter_handle(main));  // ends before this thread's state returns
      if (guard) {
        ok = ready_type();
        if (!ok) PyErr_Clear();
      }
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
      PyErr_SetString(PyExc_RuntimeError, "isola.SharedMapping could not be made ready");
      return -1;
    }
  }
  return PyModule_AddObjectRef(m, "SharedMapping", reinterpret_cast<PyObject*>(&mapping_type_storage));
}

const lazy_attribute shared_lazy[] = {{"SharedMapping", make_mapping_type}, {nullptr, nullptr}};

// isola.SharedMapping is made on first use: the type is made ready in the main interpreter.
module_part_registrar shared_part({"shared", shared_methods, nullptr, shared_lazy});

}  // namespace
}  // namespace isola::detail

namespace isola {

namespace py = detail::py;
using detail::from_python;
using detail::to_python;

std::vector<std::string> shared_names() {
  auto& r = detail::registry();
  std::lock_guard lock(r.mu);
  return r.order;
}

bool is_shared(std::string_view name) { return detail::find_shared(name) != nullptr; }

void share(std::string_view name, const value& v, share_options options) {
  if (name.empty()) throw std::invalid_argument("isola::share: the name must not be empty");
  auto main = detail::runtime().main;
  if (!main) throw error(errc::no_runtime, "isola::share: no isola::runtime");
  std::string stream;
  std::optional<detail::failure> f;
  {
    auto guard = attach(interpreter_handle(main));
    guard.value();  // throws isola::error if the main interpreter cannot be attached
    py::object o = detail::with_python_errors([&] { return to_python(v); });
    detail::stream_writer w(options.max_bytes, true);
    if (!w.write(o.get())) {
      PyObject* exc = PyErr_GetRaisedException();
      py::object s = py::steal(PyObject_Str(exc));
      std::string msg = s ? PyUnicode_AsUTF8(s.get()) : "cannot share this value";
      const bool too_big = PyErr_GivenExceptionMatches(exc, PyExc_MemoryError);
      Py_DECREF(exc);
      PyErr_Clear();
      if (too_big) throw std::length_error("isola::share: " + msg);
      throw std::invalid_argument("isola::share: " + msg);
    }
    stream = std::move(w.data());
  }
  f = detail::publish(std::string(name), stream, options.replace);
  if (f) throw std::invalid_argument("isola::share: " + f->message);
}

std::optional<value> shared_copy(std::string_view name) {
  PyObject* o = detail::find_shared(name);
  if (o == nullptr) return std::nullopt;
  auto main = detail::runtime().main;
  if (!main) throw error(errc::no_runtime, "isola::shared_copy: no isola::runtime");
  auto guard = attach(interpreter_handle(main));
  guard.value();  // throws isola::error if the main interpreter cannot be attached
  // Mappings are read as dicts (copy() at every depth) through a helper in Python.
  py::object code = py::steal(Py_CompileString(
      "def plain(o):\n"
      "    if isinstance(o, tuple): return tuple(plain(x) for x in o)\n"
      "    if hasattr(o, 'copy') and type(o).__name__ == 'SharedMapping':\n"
      "        return {plain(k): plain(v) for k, v in o.items()}\n"
      "    return o\n",
      "<isola.shared_copy>", Py_file_input));
  return detail::with_python_errors([&] {
    py::object ns = py::check(PyDict_New());
    py::check_zero(PyDict_SetItemString(ns.get(), "__builtins__", PyEval_GetBuiltins()));
    py::check(PyEval_EvalCode(py::check(code.release()).get(), ns.get(), ns.get()));
    PyObject* plain = PyDict_GetItemString(ns.get(), "plain");  // borrowed
    py::object copy = py::check(PyObject_CallOneArg(plain, o));
    return from_python(copy.get());
  });
}

}  // namespace isola

// ---- C++ views ---------------------------------------------------------------------------------

#if PY_VERSION_HEX >= 0x030D0000
// Exported by CPython 3.13 (declared in its internal headers only; public in 3.12's pyhash.h):
// the hash of a str's code units, as str.__hash__ computes it.
extern "C" Py_hash_t _Py_HashBytes(const void*, Py_ssize_t);
#endif

namespace isola {

struct shared_access {
  static shared_view make(PyObject* o) noexcept { return shared_view(o); }
  static PyObject* object(const shared_view& v) noexcept {
    return static_cast<PyObject*>(const_cast<void*>(v.o_));
  }
};

namespace {

PyObject* obj(const shared_view& v) { return shared_access::object(v); }

[[noreturn]] void wrong_kind(const char* wanted, PyObject* o) {
  throw std::logic_error(std::string("isola::shared_view: not ") + wanted + " but " +
                         Py_TYPE(o)->tp_name);
}

const detail::shared_table& table_of_view(PyObject* o) {
  if (!detail::is_mapping(o)) wrong_kind("a mapping", o);
  return detail::table_of(o);
}

// The UTF-8 form of a shared str (filled in when it was published), if it has one.
std::optional<std::string_view> utf8_of(PyObject* s) {
  if (PyUnicode_IS_COMPACT_ASCII(s)) {
    return std::string_view(static_cast<const char*>(PyUnicode_DATA(s)),
                            static_cast<std::size_t>(PyUnicode_GET_LENGTH(s)));
  }
  const auto* c = reinterpret_cast<const PyCompactUnicodeObject*>(s);
  if (c->utf8 == nullptr) return std::nullopt;  // a lone surrogate
  return std::string_view(c->utf8, static_cast<std::size_t>(c->utf8_length));
}

// str.__hash__ of the text `utf8`, computed as CPython does from the code units of the
// narrowest kind that holds it; nullopt for text that is not valid UTF-8.
std::optional<Py_hash_t> str_hash(std::string_view utf8) {
  std::vector<std::uint32_t> cps;
  cps.reserve(utf8.size());
  bool ascii = true;
  std::uint32_t max = 0;
  for (std::size_t i = 0; i < utf8.size();) {
    const auto b = static_cast<unsigned char>(utf8[i]);
    std::uint32_t cp = 0;
    std::size_t len = 0;
    if (b < 0x80) {
      cp = b;
      len = 1;
    } else if ((b >> 5) == 0x6) {
      cp = b & 0x1f;
      len = 2;
    } else if ((b >> 4) == 0xe) {
      cp = b & 0x0f;
      len = 3;
    } else if ((b >> 3) == 0x1e) {
      cp = b & 0x07;
      len = 4;
    } else {
      return std::nullopt;
    }
    if (i + len > utf8.size()) return std::nullopt;
    for (std::size_t k = 1; k < len; ++k) {
      const auto c = static_cast<unsigned char>(utf8[i + k]);
      if ((c >> 6) != 0x2) return std::nullopt;
      cp = (cp << 6) | (c & 0x3f);
    }
    ascii = ascii && len == 1;
    max = std::max(max, cp);
    cps.push_back(cp);
    i += len;
  }
  if (ascii) return _Py_HashBytes(utf8.data(), static_cast<Py_ssize_t>(utf8.size()));
  const auto n = static_cast<Py_ssize_t>(cps.size());
  if (max < 0x100) {
    std::vector<std::uint8_t> u(cps.begin(), cps.end());
    return _Py_HashBytes(u.data(), n);
  }
  if (max < 0x10000) {
    std::vector<std::uint16_t> u(cps.begin(), cps.end());
    return _Py_HashBytes(u.data(), n * 2);
  }
  return _Py_HashBytes(cps.data(), n * 4);
}

// int.__hash__ of v: its value modulo 2**61 - 1, with its sign, and -1 made -2.
Py_hash_t int_hash(std::int64_t v) {
  constexpr std::uint64_t modulus = (std::uint64_t{1} << 61) - 1;
  const std::uint64_t magnitude =
      v < 0 ? std::uint64_t{0} - static_cast<std::uint64_t>(v) : static_cast<std::uint64_t>(v);
  auto h = static_cast<Py_hash_t>(magnitude % modulus);
  if (v < 0) h = -h;
  return h == -1 ? -2 : h;
}

template <typename Match>
std::optional<shared_view> probe(const detail::shared_table& t, Py_hash_t hash, Match&& match) {
  if (t.slots.empty()) return std::nullopt;
  const std::size_t mask = t.slots.size() - 1;
  for (std::size_t i = static_cast<std::size_t>(hash) & mask;; i = (i + 1) & mask) {
    const auto& s = t.slots[i];
    if (s.key == nullptr) return std::nullopt;
    if (s.hash == hash && match(s.key)) return shared_access::make(s.value);
  }
}

}  // namespace

shared_view::kind shared_view::type() const noexcept {
  PyObject* o = obj(*this);
  if (o == Py_None) return kind::none;
  if (PyBool_Check(o)) return kind::boolean;
  if (PyLong_CheckExact(o)) return kind::integer;
  if (PyFloat_CheckExact(o)) return kind::floating;
  if (PyComplex_CheckExact(o)) return kind::complex;
  if (PyUnicode_CheckExact(o)) return kind::str;
  if (PyBytes_CheckExact(o)) return kind::bytes;
  if (PyTuple_CheckExact(o)) return kind::tuple;
  return kind::mapping;
}

bool shared_view::as_bool() const {
  if (!PyBool_Check(obj(*this))) wrong_kind("a bool", obj(*this));
  return obj(*this) == Py_True;
}

std::int64_t shared_view::as_int() const {
  PyObject* o = obj(*this);
  if (!PyLong_CheckExact(o)) wrong_kind("an int", o);
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);  // an exact int: no error
  if (overflow != 0) throw std::out_of_range("isola::shared_view: the int does not fit 64 bits");
  return static_cast<std::int64_t>(v);
}

double shared_view::as_float() const {
  if (!PyFloat_CheckExact(obj(*this))) wrong_kind("a float", obj(*this));
  return PyFloat_AS_DOUBLE(obj(*this));
}

std::string_view shared_view::as_str() const {
  PyObject* o = obj(*this);
  if (!PyUnicode_CheckExact(o)) wrong_kind("a str", o);
  auto u = utf8_of(o);
  if (!u) throw std::domain_error("isola::shared_view: the str has a lone surrogate: no UTF-8");
  return *u;
}

std::string_view shared_view::as_bytes() const {
  PyObject* o = obj(*this);
  if (!PyBytes_CheckExact(o)) wrong_kind("bytes", o);
  return std::string_view(PyBytes_AS_STRING(o), static_cast<std::size_t>(PyBytes_GET_SIZE(o)));
}

std::size_t shared_view::size() const {
  PyObject* o = obj(*this);
  if (PyTuple_CheckExact(o)) return static_cast<std::size_t>(PyTuple_GET_SIZE(o));
  return table_of_view(o).size;
}

shared_view shared_view::operator[](std::size_t i) const {
  PyObject* o = obj(*this);
  if (!PyTuple_CheckExact(o)) wrong_kind("a tuple", o);
  if (i >= static_cast<std::size_t>(PyTuple_GET_SIZE(o))) {
    throw std::out_of_range("isola::shared_view: tuple index " + std::to_string(i) +
                            " past its " + std::to_string(PyTuple_GET_SIZE(o)) + " items");
  }
  return shared_access::make(PyTuple_GET_ITEM(o, static_cast<Py_ssize_t>(i)));
}

std::optional<shared_view> shared_view::find(std::string_view key) const {
  const auto& t = table_of_view(obj(*this));
  const auto hash = str_hash(key);
  if (!hash) return std::nullopt;
  return probe(t, *hash, [&](PyObject* k) {
    if (!PyUnicode_CheckExact(k)) return false;
    auto u = utf8_of(k);
    return u && *u == key;
  });
}

std::optional<shared_view> shared_view::find(std::int64_t key) const {
  const auto& t = table_of_view(obj(*this));
  return probe(t, int_hash(key), [&](PyObject* k) {
    if (!PyLong_Check(k)) return false;  // int or bool, as a dict compares them
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(k, &overflow);
    return overflow == 0 && v == key;
  });
}

shared_view shared_view::key(std::size_t i) const {
  const auto& t = table_of_view(obj(*this));
  if (i >= t.size) throw std::out_of_range("isola::shared_view: mapping index past its end");
  return shared_access::make(PyTuple_GET_ITEM(t.keys, static_cast<Py_ssize_t>(i)));
}

shared_view shared_view::value(std::size_t i) const {
  const auto& t = table_of_view(obj(*this));
  if (i >= t.size) throw std::out_of_range("isola::shared_view: mapping index past its end");
  return shared_access::make(PyTuple_GET_ITEM(t.values, static_cast<Py_ssize_t>(i)));
}

std::optional<shared_view> shared_ref(std::string_view name) {
  PyObject* o = detail::find_shared(name);
  if (o == nullptr) return std::nullopt;
  return shared_access::make(o);
}

}  // namespace isola
