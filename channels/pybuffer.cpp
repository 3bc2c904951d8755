// Zero-copy buffers and pickles for the channels' Python face (see pybuffer.hpp).
#include "channels/pybuffer.hpp"

#include "lib/py.hpp"
#include "lib/state.hpp"

#include <isola/attach.hpp>
#include <isola/log.hpp>

#include <mutex>
#include <string>
#include <vector>

namespace isola::detail {
namespace {

/// Per exporting interpreter: buffers whose release could not attach because the interpreter
/// was already closing; its at-end hook releases them with its GIL held.
struct export_registry {
  std::mutex mu;
  bool ended = false;
  std::vector<Py_buffer> pending;
};

std::mutex& orphan_mutex() {
  static std::mutex m;
  return m;
}

/// Keeps a Py_buffer of an object in the interpreter that sent it.
class py_buffer_source final : public buffer_source {
 public:
  py_buffer_source(const Py_buffer& view, std::shared_ptr<interp_state> owner,
                   std::shared_ptr<export_registry> reg)
      : view_(view),
        owner_(std::move(owner)),
        reg_(std::move(reg)),
        exact_bytes_(view.obj != nullptr && PyBytes_CheckExact(view.obj)) {}

  std::span<const std::byte> bytes() const noexcept override {
    return {static_cast<const std::byte*>(view_.buf), static_cast<std::size_t>(view_.len)};
  }
  /// Whether the shared object is a bytes object (not a subclass, not another exporter).
  bool exact_bytes() const noexcept { return exact_bytes_; }
  /// The shared object, if the current interpreter is the one that sent it (borrowed).
  PyObject* object_if_here() const noexcept {
    return attached_here(*owner_) ? view_.obj : nullptr;
  }

  ~py_buffer_source() override {
    if (attached_here(*owner_)) {
      PyBuffer_Release(&view_);
      return;
    }
    if (auto guard = attach(interpreter_handle(owner_))) {
      PyBuffer_Release(&view_);
      return;
    }
    {
      std::lock_guard lock(reg_->mu);
      if (!reg_->ended) {
        reg_->pending.push_back(view_);  // released by the owner just before it ends
        return;
      }
    }
    orphan();
  }

 private:
  // The owner has ended while this buffer was still referenced. The object was kept alive
  // through its end (we held a reference), and its memory is intact: a buffer this large is
  // allocated with PyMem_RawMalloc, outside the interpreter's arenas. A bytes object is one
  // such block, so dropping the last reference can free it; for any other exporter isola
  // cannot know how, and the memory is left allocated (logged).
  void orphan() noexcept {
    PyObject* o = view_.obj;
    if (o == nullptr) return;
    if (exact_bytes_) {
      std::lock_guard lock(orphan_mutex());
      Py_ssize_t rc = Py_REFCNT(o);
      if (rc <= 1) {
        PyMem_RawFree(o);
      } else {
        Py_SET_REFCNT(o, rc - 1);
      }
      return;
    }
    logger("isola.channel")
        ->warn("[interp {}] a {}-byte shared buffer outlived the interpreter that sent it; "
               "its memory is left allocated (send bytes, or keep the sender alive until "
               "receivers drop their memoryviews)",
               owner_->id, view_.len);
  }

  Py_buffer view_;
  std::shared_ptr<interp_state> owner_;
  std::shared_ptr<export_registry> reg_;
  bool exact_bytes_;
};

// Where an interpreter's export registry is kept (lib/state.hpp's extension slots).
const extension_key exports_key{"channels.exports"};

std::shared_ptr<export_registry> registry_for(const std::shared_ptr<interp_state>& owner) {
  static std::mutex creation;
  std::lock_guard serial(creation);
  {
    std::lock_guard lock(owner->mu);
    if (auto found = extension(*owner, exports_key)) {
      return std::static_pointer_cast<export_registry>(found);
    }
  }
  auto reg = std::make_shared<export_registry>();
  bool added = add_at_end(*owner, [reg] {
    std::vector<Py_buffer> pending;
    {
      std::lock_guard lock(reg->mu);
      reg->ended = true;
      pending.swap(reg->pending);
    }
    for (auto& v : pending) PyBuffer_Release(&v);
  });
  if (!added) return nullptr;  // the interpreter is ending: copy instead
  std::lock_guard lock(owner->mu);
  set_extension(*owner, exports_key, reg);
  return reg;
}

shared_buffer copy_buffer(const Py_buffer& view) {
  return shared_buffer::copy_of(
      {static_cast<const std::byte*>(view.buf), static_cast<std::size_t>(view.len)});
}

// ---- isola._SharedBuffer ----------------------------------------------------------------------

struct py_shared_buffer {
  PyObject_HEAD
  shared_buffer buf;
};

int sb_getbuffer(PyObject* self, Py_buffer* view, int flags) {
  auto& b = reinterpret_cast<py_shared_buffer*>(self)->buf;
  if ((flags & PyBUF_WRITABLE) == PyBUF_WRITABLE) {
    PyErr_SetString(PyExc_BufferError, "isola shared buffers are read-only");
    view->obj = nullptr;
    return -1;
  }
  return PyBuffer_FillInfo(view, self, const_cast<std::byte*>(b.data()),
                           static_cast<Py_ssize_t>(b.size()), 1, flags);
}

void sb_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  reinterpret_cast<py_shared_buffer*>(self)->buf.~shared_buffer();
  type->tp_free(self);
  Py_DECREF(type);
}

Py_ssize_t sb_len(PyObject* self) {
  return static_cast<Py_ssize_t>(reinterpret_cast<py_shared_buffer*>(self)->buf.size());
}

PyType_Slot sb_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(sb_dealloc)},
    {Py_bf_getbuffer, reinterpret_cast<void*>(sb_getbuffer)},
    {Py_sq_length, reinterpret_cast<void*>(sb_len)},
    {Py_tp_doc, const_cast<char*>("Read-only memory shared through an isola channel; received "
                                  "wrapped in a memoryview.")},
    {0, nullptr}};

PyType_Spec sb_spec = {"isola._SharedBuffer", sizeof(py_shared_buffer), 0, Py_TPFLAGS_DEFAULT,
                       sb_slots};

}  // namespace

bool buffer_from_python(PyObject* obj, shared_buffer& out) {
  Py_buffer view;
  if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) {
    // Not C-contiguous (a strided memoryview): copy it into one block.
    PyErr_Clear();
    if (PyObject_GetBuffer(obj, &view, PyBUF_FULL_RO) < 0) return false;
    std::vector<std::byte> bytes(static_cast<std::size_t>(view.len));
    int rc = PyBuffer_ToContiguous(bytes.data(), &view, view.len, 'C');
    PyBuffer_Release(&view);
    if (rc < 0) return false;
    out = shared_buffer::adopt(std::move(bytes));
    return true;
  }
  if (view.len < zero_copy_min) {
    out = copy_buffer(view);
    PyBuffer_Release(&view);
    return true;
  }
  auto owner = find_interp(PyInterpreterState_GetID(PyInterpreterState_Get()));
  auto reg = owner ? registry_for(owner) : nullptr;
  if (!reg) {
    out = copy_buffer(view);
    PyBuffer_Release(&view);
    return true;
  }
  out = shared_buffer(std::make_shared<py_buffer_source>(view, std::move(owner), std::move(reg)));
  return true;
}

bool is_shared_bytes(const shared_buffer& b) noexcept {
  const auto* src = dynamic_cast<const py_buffer_source*>(b.source().get());
  return src != nullptr && src->exact_bytes();
}

PyObject* bytes_of(const shared_buffer& b) {
  const auto* src = dynamic_cast<const py_buffer_source*>(b.source().get());
  if (src != nullptr && src->exact_bytes()) {
    // Received where it was sent: the bytes object itself (immutable, so nothing can tell).
    if (PyObject* o = src->object_if_here()) return Py_NewRef(o);
  }
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(b.data()),
                                   static_cast<Py_ssize_t>(b.size()));
}

PyObject* memoryview_of(PyObject* module, const shared_buffer& b) {
  PyObject* t = PyObject_GetAttrString(module, "_SharedBuffer");
  if (t == nullptr) return nullptr;
  if (!PyType_Check(t)) {
    Py_DECREF(t);
    PyErr_SetString(PyExc_TypeError, "isola._SharedBuffer has been replaced");
    return nullptr;
  }
  auto* type = reinterpret_cast<PyTypeObject*>(t);
  auto* sb = reinterpret_cast<py_shared_buffer*>(type->tp_alloc(type, 0));
  Py_DECREF(t);
  if (sb == nullptr) return nullptr;
  new (&sb->buf) shared_buffer(b);
  PyObject* mv = PyMemoryView_FromObject(reinterpret_cast<PyObject*>(sb));
  Py_DECREF(sb);
  return mv;
}

// CPython 3.12.0-3.12.3 crash in Py_Finalize after a C function of an extension module (here
// _pickle's dumps/loads) was called with keyword arguments in an own-GIL interpreter
// (gh-119213, fixed in 3.12.4). There, use pickle's pure-Python twins, which take the same
// arguments.
#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030C0400
constexpr const char* dumps_name = "_dumps";
constexpr const char* loads_name = "_loads";
#else
constexpr const char* dumps_name = "dumps";
constexpr const char* loads_name = "loads";
#endif

namespace {

// The pickle stream of an item that names channels (a Channel pickled inside a container, as
// Channel(id=N)): its source also holds those channels, so they live while the item does and
// the id still names a channel when the receiver unpickles it.
class stream_with_channels final : public buffer_source {
 public:
  stream_with_channels(shared_buffer stream, std::vector<channel_ref> channels) noexcept
      : stream_(std::move(stream)), channels_(std::move(channels)) {}
  std::span<const std::byte> bytes() const noexcept override { return stream_.bytes(); }

 private:
  shared_buffer stream_;
  std::vector<channel_ref> channels_;
};

// The channels the pickle_to running on this thread has met (nullptr outside one).
thread_local std::vector<channel_ref>* pickling_channels = nullptr;

}  // namespace

bool note_pickled_channel(const channel& ch) {
  if (pickling_channels == nullptr) return true;
  try {
    pickling_channels->push_back(channel_ref(ch));
    return true;
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
    return false;
  }
}

bool pickle_to(PyObject* obj, pickled& out) {
  std::vector<channel_ref> channels;
  struct collect {
    std::vector<channel_ref>* outer;
    explicit collect(std::vector<channel_ref>* mine) : outer(pickling_channels) {
      pickling_channels = mine;
    }
    ~collect() { pickling_channels = outer; }
  } scope(&channels);
  try {
    auto pickle = py::import("pickle");
    auto dumps = py::getattr(pickle.get(), dumps_name);
    auto buffers = py::check(PyList_New(0));
    auto append = py::getattr(buffers.get(), "append");
    auto args = py::check(PyTuple_Pack(1, obj));
    auto kwargs = py::check(PyDict_New());
    auto five = py::check(PyLong_FromLong(5));
    py::check_zero(PyDict_SetItemString(kwargs.get(), "protocol", five.get()));
    py::check_zero(PyDict_SetItemString(kwargs.get(), "buffer_callback", append.get()));
    auto data = py::check(PyObject_Call(dumps.get(), args.get(), kwargs.get()));
    pickled p;
    if (!buffer_from_python(data.get(), p.data)) return false;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(buffers.get()); ++i) {
      shared_buffer b;
      if (!buffer_from_python(PyList_GET_ITEM(buffers.get(), i), b)) return false;
      p.out_of_band.push_back(std::move(b));
    }
    if (!channels.empty()) {
      p.data = shared_buffer(
          std::make_shared<stream_with_channels>(std::move(p.data), std::move(channels)));
    }
    out = std::move(p);
    return true;
  } catch (const py::error_already_set&) {
    return false;
  }
}

PyObject* unpickle(PyObject* module, const pickled& p) {
  try {
    auto pickle = py::import("pickle");
    auto loads = py::getattr(pickle.get(), loads_name);
    auto data = py::check(memoryview_of(module, p.data));
    auto buffers = py::check(PyList_New(static_cast<Py_ssize_t>(p.out_of_band.size())));
    for (std::size_t i = 0; i < p.out_of_band.size(); ++i) {
      PyList_SET_ITEM(buffers.get(), static_cast<Py_ssize_t>(i),
                      py::check(memoryview_of(module, p.out_of_band[i])).release());
    }
    auto args = py::check(PyTuple_Pack(1, data.get()));
    auto kwargs = py::check(PyDict_New());
    py::check_zero(PyDict_SetItemString(kwargs.get(), "buffers", buffers.get()));
    return PyObject_Call(loads.get(), args.get(), kwargs.get());
  } catch (const py::error_already_set&) {
    return nullptr;
  }
}

int add_shared_buffer_type(PyObject* module) {
  PyObject* t = PyType_FromModuleAndSpec(module, &sb_spec, nullptr);
  if (t == nullptr) return -1;
  return module_add(module, "_SharedBuffer", t);
}

}  // namespace isola::detail
