// isola::interpreter: the public face of a worker. Each operation is a small lambda run with
// the interpreter attached; values cross through the codec, exceptions through pyexec.
#include "lib/python.hpp"

#include "lib/memory.hpp"
#include "lib/pyexec.hpp"
#include "lib/value_codec.hpp"
#include "interp/worker.hpp"

#include <isola/interpreter.hpp>
#include <isola/log.hpp>

#include <cerrno>
#include <fstream>
#include <sstream>

namespace isola {

class interpreter::impl {
 public:
  explicit impl(interpreter_config config) : worker(detail::worker::start(std::move(config))) {}
  std::shared_ptr<detail::worker> worker;
};

interpreter_config interpreter_config::legacy() {
  interpreter_config c;
  c.gil = gil_mode::shared;
  c.use_main_obmalloc = true;
  c.allow_fork = true;
  c.allow_exec = true;
  c.allow_daemon_threads = true;
  c.check_multi_interp_extensions = false;
  c.allow_os_exit = true;
  c.extensions = extension_policy::shared_gil;
  return c;
}

interpreter_config interpreter_config::shared_gil() {
  interpreter_config c;
  c.gil = gil_mode::shared;
  c.use_main_obmalloc = true;
  c.check_multi_interp_extensions = false;
  c.extensions = extension_policy::shared_gil;
  return c;
}

std::string interpreter_config::validate() const {
  if (gil == gil_mode::own && use_main_obmalloc) {
    return "interpreter_config: an own GIL needs its own object allocator; set "
           "use_main_obmalloc=false (or use gil_mode::shared)";
  }
  if (!use_main_obmalloc && !check_multi_interp_extensions) {
    return "interpreter_config: an interpreter with its own object allocator must check "
           "extensions for multi-interpreter support; set check_multi_interp_extensions=true "
           "(or use_main_obmalloc=true)";
  }
  if (allow_daemon_threads && !allow_threads) {
    return "interpreter_config: allow_daemon_threads needs allow_threads=true";
  }
  if (extensions == extension_policy::shared_gil && gil != gil_mode::shared) {
    return "interpreter_config: the shared-gil extension policy needs an interpreter that "
           "shares the main GIL; use interpreter_config::shared_gil()";
  }
  if (extensions == extension_policy::automatic) {
    return "interpreter_config: the auto extension policy re-runs a task in a pool's "
           "shared-GIL lane; set it on pool_options::extensions, not on an interpreter";
  }
  if (memory_limit != 0 && use_main_obmalloc) {
    return "interpreter_config: memory_limit needs the interpreter's own object allocator "
           "(use_main_obmalloc=false): small objects of interpreters that share the main "
           "allocator live in its arenas and cannot be told apart";
  }
  if (end_timeout.count() < 0 || end_grace.count() < 0) {
    return "interpreter_config: end_timeout and end_grace must not be negative";
  }
  return {};
}

namespace {

namespace py = detail::py;

struct exec_op {
  std::string code;
  void operator()() const {
    auto g = detail::main_globals();
    detail::run_source(code, "<string>", Py_file_input, g.get());
  }
};

struct eval_op {
  std::string expression;
  value operator()() const {
    auto g = detail::main_globals();
    auto r = detail::run_source(expression, "<string>", Py_eval_input, g.get());
    return detail::from_python(r.get());
  }
};

struct call_op {
  std::string target;
  std::vector<value> args;
  std::vector<std::pair<std::string, value>> kwargs;
  value operator()() const {
    auto fn = detail::resolve_target(target);
    return detail::call_with_values(fn.get(), args, kwargs);
  }
};

struct run_file_op {
  std::filesystem::path path;
  std::vector<std::string> argv;
  void operator()() const {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      errno = errno ? errno : ENOENT;
      PyErr_SetFromErrnoWithFilename(PyExc_OSError, path.c_str());
      throw py::error_already_set{};
    }
    std::ostringstream text;
    text << in.rdbuf();

    auto sys_argv = py::check(PyList_New(0));
    py::check_zero(PyList_Append(sys_argv.get(), py::str(path.string()).get()));
    for (const auto& a : argv) py::check_zero(PyList_Append(sys_argv.get(), py::str(a).get()));
    py::check_zero(PySys_SetObject("argv", sys_argv.get()));

    // Like `python script.py`: the script's folder comes first on sys.path.
    std::string dir = std::filesystem::absolute(path).parent_path().string();
    PyObject* sys_path = PySys_GetObject("path");  // borrowed
    if (sys_path != nullptr && PyList_Check(sys_path)) {
      auto d = py::str(dir);
      int has = PySequence_Contains(sys_path, d.get());
      py::check_nonneg(has);
      if (!has) py::check_zero(PyList_Insert(sys_path, 0, d.get()));
    }

    auto g = detail::main_globals();
    py::check_zero(PyDict_SetItemString(g.get(), "__file__", py::str(path.string()).get()));
    std::string file = path.string();
    detail::run_source(text.str(), file.c_str(), Py_file_input, g.get());
  }
};

struct set_global_op {
  std::string name;
  value v;
  void operator()() const {
    auto g = detail::main_globals();
    py::check_zero(PyDict_SetItemString(g.get(), name.c_str(), detail::to_python(v).get()));
  }
};

struct get_global_op {
  std::string name;
  value operator()() const {
    auto g = detail::main_globals();
    auto key = py::str(name);
    PyObject* v = PyDict_GetItemWithError(g.get(), key.get());  // borrowed
    if (v == nullptr) {
      if (PyErr_Occurred()) throw py::error_already_set{};
      py::raise(PyExc_NameError, "name '" + name + "' is not defined");
    }
    auto keep = py::borrow(v);
    return detail::from_python(v);
  }
};

}  // namespace

interpreter::interpreter(interpreter_config config)
    : impl_(std::make_shared<impl>(std::move(config))) {}

namespace {
// Closes the interpreter impl holds, as the destructor must: never throwing. Closing from its
// own worker or an attached thread cannot wait for itself; the runtime ends the interpreter at
// shutdown instead.
void close_for_good(const std::shared_ptr<detail::worker>& w) noexcept {
  if (!w) return;
  try {
    w->close();
  } catch (const std::exception& e) {
    logger("isola.interp")->error("[interp {}] not closed on destruction or move-assignment: {}",
                                  w->state()->id, e.what());
    detail::defer_release(w);
  }
}
}  // namespace

interpreter::~interpreter() { close_for_good(impl_ ? impl_->worker : nullptr); }

interpreter::interpreter(interpreter&&) noexcept = default;
interpreter& interpreter::operator=(interpreter&& other) noexcept {
  if (this != &other) {
    close_for_good(impl_ ? impl_->worker : nullptr);
    impl_ = std::move(other.impl_);
  }
  return *this;
}

namespace {
// The worker behind an interpreter's impl (a template: impl is private to interpreter).
template <typename Impl>
detail::worker& w(const std::shared_ptr<Impl>& p) {
  if (!p) throw std::logic_error("isola::interpreter was moved from");
  return *p->worker;
}
}  // namespace

std::int64_t interpreter::id() const noexcept { return impl_ ? impl_->worker->state()->id : -1; }
interpreter_handle interpreter::handle() const noexcept {
  return impl_ ? interpreter_handle(impl_->worker->state()) : interpreter_handle();
}
const interpreter_config& interpreter::config() const { return w(impl_).config(); }

void interpreter::exec(std::string_view code) { w(impl_).run(exec_op{std::string(code)}); }
std::future<void> interpreter::exec_async(std::string code) {
  return w(impl_).run_async(exec_op{std::move(code)});
}

value interpreter::eval(std::string_view expression) {
  return w(impl_).run(eval_op{std::string(expression)});
}
std::future<value> interpreter::eval_async(std::string expression) {
  return w(impl_).run_async(eval_op{std::move(expression)});
}

value interpreter::call_with(std::string_view target, std::vector<value> args,
                             std::vector<std::pair<std::string, value>> kwargs) {
  return w(impl_).run(call_op{std::string(target), std::move(args), std::move(kwargs)});
}
std::future<value> interpreter::call_with_async(std::string target, std::vector<value> args,
                                                std::vector<std::pair<std::string, value>> kwargs) {
  return w(impl_).run_async(call_op{std::move(target), std::move(args), std::move(kwargs)});
}

void interpreter::run_file(const std::filesystem::path& path, std::vector<std::string> argv) {
  w(impl_).run(run_file_op{path, std::move(argv)});
}
std::future<void> interpreter::run_file_async(std::filesystem::path path,
                                              std::vector<std::string> argv) {
  return w(impl_).run_async(run_file_op{std::move(path), std::move(argv)});
}

void interpreter::set_global(std::string_view name, value v) {
  w(impl_).run(set_global_op{std::string(name), std::move(v)});
}
std::future<void> interpreter::set_global_async(std::string name, value v) {
  return w(impl_).run_async(set_global_op{std::move(name), std::move(v)});
}

value interpreter::get_global(std::string_view name) {
  return w(impl_).run(get_global_op{std::string(name)});
}
std::future<value> interpreter::get_global_async(std::string name) {
  return w(impl_).run_async(get_global_op{std::move(name)});
}

bool interpreter::interrupt(std::string_view exception_type) {
  return w(impl_).interrupt(exception_type);
}

void interpreter::close() { w(impl_).close(); }

memory_usage interpreter::memory() const { return detail::memory_of(*w(impl_).state()); }
bool interpreter::closed() const noexcept { return !impl_ || impl_->worker->closed(); }

}  // namespace isola
