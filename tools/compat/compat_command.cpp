// `isola compat MODULE... | --stdlib | --path DIR`: whether modules work in isola's own-GIL
// interpreters. Each module is checked in child processes of this same executable (one per
// order of ending the interpreters; see child.cpp), --jobs of them at a time, each under
// --timeout, so that a crash or a hang is a row of the result, not the end of the run.
#include "tools/compat/compat.hpp"
#include "tools/compat/py/compat_list.py.hpp"
#include "tools/compat/report.hpp"
#include "tools/isola/cli.hpp"
#include "tools/isola/signals.hpp"

#include <isola/info.hpp>
#include <isola/interpreter.hpp>
#include <isola/runtime.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

namespace isola::cli {
namespace {

namespace fs = std::filesystem;
using namespace compat;

struct compat_options {
  std::vector<std::string> modules;
  bool stdlib = false;
  std::string path;
  bool json = false;
  bool markdown = false;
  bool quiet = false;
  unsigned jobs = cores();
  double timeout = 60;
  unsigned repeat = 1;
  std::string log_level;
  std::string emit_policy;  ///< --emit-policy FILE
  // The child modes (hidden from --help).
  std::string child;
  std::string child_inspect;
  std::string order = "creation";
  std::string report;
  bool import_only = false;
};

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream s(text);
  for (std::string line; std::getline(s, line);) {
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

/// A temporary folder for the children's report and output files, removed with the object.
class work_folder {
 public:
  work_folder() {
    std::string tmpl = (fs::temp_directory_path() / "isola-compat-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      throw std::runtime_error(fmt::format("compat: cannot make a temporary folder in {}: {}",
                                           fs::temp_directory_path().string(),
                                           std::strerror(errno)));
    }
    path_ = tmpl;
  }
  ~work_folder() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

/// What every check of a run shares.
struct checker {
  const compat_options& o;
  std::string exe;
  fs::path folder;
  std::string child_log_level;
  std::atomic<unsigned> next_file{0};

  std::vector<std::string> child_args(const std::string& mode, const std::string& module,
                                      const fs::path& report) const {
    std::vector<std::string> a{exe, "compat", mode, module, "--report", report.string(),
                               "--log-level", child_log_level};
    if (!o.path.empty()) {
      a.push_back("--path");
      a.push_back(o.path);
    }
    return a;
  }

  /// Runs one child; returns its report lines and output (and removes their files).
  process_result run(std::vector<std::string> args, const fs::path& report,
                     std::vector<std::string>& report_lines, std::string& output) {
    const fs::path log = folder / fmt::format("{}.log", next_file++);
    process_result p = run_process(args, log.string(), o.timeout);
    report_lines = lines_of(read_text(report));
    output = read_text(log);
    std::error_code ec;
    fs::remove(report, ec);
    fs::remove(log, ec);
    return p;
  }

  /// One probe child; sets `stopped` if this process was asked to stop meanwhile.
  order_result probe(const std::string& module, close_order order, bool import_only,
                     bool& stopped) {
    const fs::path report = folder / fmt::format("{}.report", next_file++);
    auto args = child_args("--child", module, report);
    args.push_back("--order");
    args.push_back(order_name(order));
    if (import_only) args.push_back("--import-only");
    std::vector<std::string> lines;
    std::string output;
    process_result p = run(args, report, lines, output);
    stopped = p.stopped;
    return classify(order, lines, p, output);
  }

  module_result check(const std::string& module) {
    module_result stopped_result;
    stopped_result.module = module;
    stopped_result.stopped = true;
    std::vector<order_result> runs;
    bool stopped = false;
    for (close_order order : {close_order::creation, close_order::reverse}) {
      for (unsigned i = 0; i < o.repeat; ++i) {
        runs.push_back(probe(module, order, false, stopped));
        if (stopped) return stopped_result;
      }
    }
    module_result m = combine(module, std::move(runs));
    // A crash or hang at the end after the module was used: does the import alone do it?
    if ((m.result == outcome::crashes || m.result == outcome::hangs) &&
        (m.where == "teardown" || m.where == "exit")) {
      const order_result* worst = nullptr;
      for (const auto& r : m.runs) {
        if (r.result == m.result && r.where == m.where) worst = &r;
      }
      if (worst != nullptr && worst->used && !worst->exercise.empty()) {
        order_result alone = probe(module, worst->order, true, stopped);
        if (stopped) return stopped_result;
        m.import_alone = outcome_label(alone);
        if (alone.result == m.result && alone.where == m.where) m.import_alone += " too";
      }
    }
    if (m.result == outcome::crashes && m.where == "exit") m.known_bug = known_bug_of_this_python();
    // Why it was refused, or whether it fails in the main interpreter too.
    const order_result* refused = nullptr;
    for (const auto& r : m.runs) {
      if (!r.refused.empty()) refused = &r;
    }
    const bool import_failed = m.result == outcome::fails && m.where == "import";
    if (refused != nullptr || import_failed) {
      const std::string target = refused != nullptr ? refused->refused : module;
      const fs::path report = folder / fmt::format("{}.report", next_file++);
      std::vector<std::string> lines;
      std::string output;
      process_result p = run(child_args("--child-inspect", target, report), report, lines, output);
      if (p.exit_code == 0 && !lines.empty()) {
        m.reason = reason_from_inspection(refused != nullptr, lines.back());
        if (refused != nullptr && target != module && !m.reason.empty()) {
          m.reason = target + ": " + m.reason;
        }
      }
    }
    return m;
  }
};

/// Modules listed by compat_list.py in an interpreter of this process.
std::vector<std::string> list_modules(const compat_options& o, std::string& dynload) {
  runtime rt;
  interpreter in;
  in.exec(embedded::compat_list);
  value names = o.stdlib ? in.call("__main__:stdlib_modules")
                         : in.call("__main__:path_modules", o.path);
  if (o.stdlib) dynload = in.call("__main__:stdlib_dynload").as_str();
  std::vector<std::string> out;
  for (const auto& n : names.as_list().items) out.push_back(n.as_str());
  return out;
}

/// The command line that makes this output again: this executable as the user would type
/// it from here, the options that change the rows, and the file stdout goes to.
std::string command_line(const compat_options& o) {
  std::string exe = "isola";
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  fs::path cwd = fs::current_path(ec);
  auto relative_here = [&](const fs::path& p) -> std::string {
    if (p.empty() || cwd.empty()) return {};
    fs::path rel = p.lexically_relative(cwd);
    if (rel.empty() || *rel.begin() == "..") return {};
    return rel.string();
  };
  if (std::string rel = relative_here(self); !rel.empty()) exe = rel;
  std::string cmd = exe + " compat";
  if (o.stdlib) cmd += " --stdlib";
  cmd += o.json ? " --json" : o.markdown ? " --markdown" : "";
  if (o.repeat != 1) cmd += fmt::format(" --repeat {}", o.repeat);
  if (o.timeout != 60) cmd += fmt::format(" --timeout {:g}", o.timeout);
  if (!o.path.empty()) cmd += " --path " + o.path;
  for (const auto& m : o.modules) cmd += " " + m;
  struct stat st;
  if (fstat(STDOUT_FILENO, &st) == 0 && S_ISREG(st.st_mode)) {
    fs::path out = fs::read_symlink("/proc/self/fd/1", ec);
    if (std::string rel = relative_here(out); !ec && !rel.empty()) cmd += " > " + rel;
  }
  return cmd;
}

void check_path(const std::string& path) {
  std::error_code ec;
  auto st = fs::status(path, ec);
  if (!fs::exists(st)) {
    throw usage_error(fmt::format(
        "compat: --path '{}' does not exist; give a folder of modules, such as a "
        "site-packages folder",
        path));
  }
  if (!fs::is_directory(st)) {
    throw usage_error(fmt::format(
        "compat: --path '{}' is not a folder; give the folder that holds the modules (such as "
        "a site-packages folder), or name the module with its folder: isola compat --path DIR "
        "MODULE",
        path));
  }
}

// --emit-policy FILE: the modules own-GIL interpreters refuse or crash on, as the TOML that
// isola map --policy reads (pool_options::shared_gil_modules): their tasks go to the
// shared-GIL lane.
void write_policy(const compat_options& o, const std::vector<module_result>& results) {
  std::set<std::string> lane;
  for (const auto& r : results) {
    if (r.result == outcome::refused || r.result == outcome::crashes || r.result == outcome::hangs) {
      lane.insert(r.module);
    }
  }
  std::ofstream out(o.emit_policy);
  if (!out) {
    throw std::runtime_error(fmt::format("compat: cannot write --emit-policy file '{}': {}",
                                         o.emit_policy, std::strerror(errno)));
  }
  out << "# isola's extension policy, written by `" << command_line(o) << "`\n"
      << "# (CPython " << runtime::python_version() << "). The modules below were refused in, "
      << "or crashed or hung, own-GIL\n# interpreters: `isola map --policy " << o.emit_policy
      << "` runs the tasks that name them in the\n# shared-GIL lane "
      << "(pool_options::shared_gil_modules). See docs/extensions.md.\n"
      << "shared_gil_modules = [";
  bool first = true;
  for (const auto& m : lane) {
    out << (first ? "" : ", ") << '"' << m << '"';
    first = false;
  }
  out << "]\n";
  if (!o.quiet) {
    fmt::print(stderr, "[compat] wrote {} ({} module{} for the shared-GIL lane)\n", o.emit_policy,
               lane.size(), lane.size() == 1 ? "" : "s");
  }
}

int run_compat(compat_options o) {
  apply_log_level(o.log_level);
  if (!o.child.empty() || !o.child_inspect.empty()) {
    child_options c;
    c.module = o.child.empty() ? o.child_inspect : o.child;
    c.order = o.order == "reverse" ? close_order::reverse : close_order::creation;
    c.report = o.report;
    c.path = o.path;
    c.import_only = o.import_only;
    if (c.report.empty()) throw usage_error("compat: --child needs --report FILE");
    return o.child.empty() ? run_inspect_child(c) : run_probe_child(c);
  }

  if (o.stdlib && (!o.modules.empty() || !o.path.empty())) {
    throw usage_error(
        "compat: --stdlib checks the standard library's extension modules; give either "
        "--stdlib, --path DIR, or MODULE names (with --path DIR to find them there)");
  }
  if (!o.stdlib && o.path.empty() && o.modules.empty()) {
    throw usage_error(
        "compat: which modules? give MODULE names (isola compat json sqlite3), --stdlib or "
        "--path DIR; see 'isola compat --help'");
  }
  for (const auto& m : o.modules) {
    if (m.empty() || m.find_first_of(" \t\n/\\") != std::string::npos) {
      throw usage_error(fmt::format(
          "compat: '{}' is not a module name; give dotted names such as json or "
          "xml.etree.ElementTree (for a file in a folder: --path FOLDER NAME)",
          m));
    }
  }

  const auto t0 = clock::now();
  run_info info;
  info.command = command_line(o);  // with --path as the user gave it
  if (!o.path.empty()) {
    check_path(o.path);
    o.path = fs::absolute(o.path).lexically_normal().string();  // the children's sys.path
  }
  info.python = runtime::python_version();
  if (struct utsname u; uname(&u) == 0) info.platform = fmt::format("{} {}", u.sysname, u.machine);
  info.jobs = o.jobs;
  info.repeat = o.repeat;
  info.timeout = o.timeout;
  info.workarounds = active_workarounds();
  std::vector<std::string> modules = o.modules;
  if (modules.empty()) {
    std::string dynload;
    modules = list_modules(o, dynload);
    info.modules_from = o.stdlib ? "the extension modules of the standard library: "
                                   "sys.builtin_module_names and the modules in " +
                                       (dynload.empty() ? std::string("lib-dynload") : dynload)
                                 : "every module in " + o.path;
    if (modules.empty()) {
      throw std::runtime_error(
          fmt::format("compat: found no importable module in {} (Python files, packages with "
                      "an __init__.py, extension modules)",
                      o.stdlib ? std::string("the standard library") : o.path));
    }
  } else if (!o.path.empty()) {
    info.modules_from = "found in " + o.path + " first";
  }

  work_folder folder;
  checker c{o, fs::read_symlink("/proc/self/exe").string(), folder.path(),
            o.log_level.empty() ? "error" : o.log_level};
  watch_stop_signals();
  const unsigned jobs = std::min<unsigned>(o.jobs, static_cast<unsigned>(modules.size()));
  auto progress = [&](const std::string& line) {
    if (!o.quiet) fmt::print(stderr, "[compat] {}\n", line);
  };
  progress(fmt::format(
      "checking {} module{} on CPython {}, {} at a time: each in {} child processes (the "
      "interpreters ended in creation order, then in reverse{}), at most {:g} s each",
      modules.size(), modules.size() == 1 ? "" : "s", info.python, jobs, 2 * o.repeat,
      o.repeat == 1 ? "" : fmt::format(", {} times each", o.repeat), o.timeout));

  std::vector<module_result> rows(modules.size());
  std::vector<bool> done(modules.size(), false);
  std::atomic<std::size_t> next{0};
  std::mutex m;
  std::size_t finished = 0;
  std::exception_ptr failure;
  auto worker = [&] {
    for (;;) {
      std::size_t i = next++;
      if (i >= modules.size() || stop_signal() != 0) return;
      try {
        module_result r = c.check(modules[i]);
        std::lock_guard lock(m);
        if (r.stopped) return;
        rows[i] = std::move(r);
        done[i] = true;
        ++finished;
        const double seconds = [&] {
          double s = 0;
          for (const auto& run : rows[i].runs) s += run.seconds;
          return s;
        }();
        progress(fmt::format("{}/{} {}: {} ({:.1f} s)", finished, modules.size(), modules[i],
                             outcome_label(rows[i]), seconds));
      } catch (...) {
        std::lock_guard lock(m);
        if (!failure) failure = std::current_exception();
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  for (unsigned j = 0; j < jobs; ++j) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);

  std::vector<module_result> results;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (done[i]) results.push_back(std::move(rows[i]));
  }
  info.seconds = seconds_since(t0);
  if (o.json) {
    print_json(info, results);
  } else if (o.markdown) {
    print_markdown(info, results);
  } else {
    print_table(info, results);
  }
  if (!o.emit_policy.empty()) write_policy(o, results);
  if (int sig = stop_signal(); sig != 0) {
    fmt::print(stderr, "isola compat: stopped by {} after {} of {} modules\n", signal_name(sig),
               results.size(), modules.size());
    return signal_exit_status(sig);
  }
  progress(fmt::format("{} module{} in {:.1f} s: {}", results.size(),
                       results.size() == 1 ? "" : "s", info.seconds, count_summary(results)));
  const bool all_ok = std::all_of(results.begin(), results.end(), [](const module_result& r) {
    return r.result == outcome::ok || r.result == outcome::ok_with_workaround;
  });
  return all_ok ? exit_ok : exit_failed;
}

}  // namespace

void add_compat_command(CLI::App& app, dispatch& d) {
  auto opts = std::make_shared<compat_options>();
  auto* sub = app.add_subcommand(
      "compat",
      "Check which modules work in own-GIL interpreters: import in two at once, use, end in "
      "both orders; crashes and hangs included");
  formatter_of(app).usage(sub, "[OPTIONS] MODULE... | --stdlib | --path DIR [MODULE...]");
  sub->add_option("modules", opts->modules, "Modules to check (dotted names)")
      ->type_name("MODULE");
  sub->add_flag("--stdlib", opts->stdlib,
                "Check every extension module of the running CPython's standard library: "
                "sys.builtin_module_names and the modules in its lib-dynload folder");
  sub->add_option("--path", opts->path,
                  "Check every module importable from DIR (a site-packages folder, say): its "
                  "Python files, packages and extension modules. With MODULE names, check "
                  "only those, with DIR first on sys.path")
      ->type_name("DIR");
  auto* json = sub->add_flag("--json", opts->json, "Print the results as one JSON object");
  sub->add_flag("--markdown", opts->markdown,
                "Print the results as a Markdown document with a table (docs/compat/)")
      ->excludes(json);
  sub->add_option("-j,--jobs", opts->jobs,
                  fmt::format("Modules checked at the same time, each in its own child "
                              "processes (default: cores, here {})",
                              cores()))
      ->check(CLI::Range(1u, 256u))
      ->type_name("N");
  sub->add_option("--repeat", opts->repeat,
                  "Check each order of ending N times (default: 1): some crashes come from a "
                  "race between the two imports and show in only some runs")
      ->check(CLI::Range(1u, 1000u))
      ->type_name("N");
  add_timeout_option(*sub, opts->timeout,
                     "Limit for each child process (one module, one order of ending its "
                     "interpreters); past it the child is killed and the module 'hangs' "
                     "(default: 60)");
  sub->add_flag("-q,--quiet", opts->quiet, "No progress lines on stderr");
  sub->add_option("--emit-policy", opts->emit_policy,
                  "Also write FILE: the modules refused, crashing or hanging, as a policy that "
                  "isola map --policy FILE reads to run their tasks in the shared-GIL lane")
      ->type_name("FILE");
  add_log_level_option(*sub, opts->log_level);
  // The child modes: run by this command itself, hidden from --help.
  sub->add_option("--child", opts->child)->group("");
  sub->add_option("--child-inspect", opts->child_inspect)->group("");
  sub->add_option("--order", opts->order)->check(CLI::IsMember({"creation", "reverse"}))->group("");
  sub->add_option("--report", opts->report)->group("");
  sub->add_flag("--import-only", opts->import_only)->group("");
  sub->footer(
      "For each module, a child process of isola starts the runtime, creates two interpreters\n"
      "with isola's default configuration (own GIL, own allocator, strict extension checks),\n"
      "imports the module in both at once, uses it a little where isola knows it (json dumps\n"
      "and loads, decimal arithmetic, an sqlite3 query in memory, hashlib digests, a ctypes\n"
      "call, ...; import only otherwise), ends the interpreters in creation order, then ends\n"
      "the runtime; a second child does the same ending them in reverse order. A crash or a\n"
      "hang in a child is that module's result; the run goes on.\n"
      "\n"
      "Outcomes:\n"
      "  ok                  imported, used, and every run ended cleanly\n"
      "  ok with workaround  the same, thanks to one of isola's workarounds (named; see\n"
      "                      'isola info')\n"
      "  refused             CPython refuses it in own-GIL interpreters, with the reason\n"
      "                      (single-phase init, no per-interpreter GIL support)\n"
      "  fails at STEP       it raised (a module that calls os._exit() gets isola's\n"
      "                      RuntimeError)\n"
      "  not found           there is no such module\n"
      "  crashes at STEP     the child died there, with the signal\n"
      "  hangs at STEP       the child did not finish within --timeout\n"
      "  Steps: import, use, teardown (ending the interpreters), exit (ending the runtime).\n"
      "\n"
      "The table (or --json, --markdown) goes to stdout, progress to stderr.\n"
      "\n"
      "Examples:\n"
      "  isola compat json math                two modules, as a table\n"
      "  isola compat --json sqlite3 decimal   the same as one JSON object\n"
      "  isola compat --path lib -j 4          every module in the folder lib, 4 at a time\n"
      "  isola compat --path lib tasks         the module tasks only, lib first on sys.path\n"
      "\n"
      "The tables in isola's docs/compat/ are made by 'isola compat --stdlib --markdown'.\n"
      "\n"
      "Exit status: 0 every module ok (with or without a workaround), 1 any other outcome,\n"
      "2 usage error (no modules named, --path not a folder), 130/143 stopped by\n"
      "SIGINT/SIGTERM.");
  sub->callback([opts, &d] { d.chosen = [opts] { return run_compat(*opts); }; });
}

}  // namespace isola::cli
