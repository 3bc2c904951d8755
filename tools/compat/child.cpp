// The child process of `isola compat` (see compat.hpp): one module, two own-GIL interpreters,
// one order of ending them. Each step is announced in the report file before it runs, so a
// crash or a hang is pinned to its step by the parent.
#include "tools/compat/child_report.hpp"
#include "tools/compat/compat.hpp"
#include "tools/compat/py/compat_probe.py.hpp"

#include <isola/info.hpp>
#include <isola/interpreter.hpp>
#include <isola/log.hpp>
#include <isola/runtime.hpp>

#include <boost/json.hpp>

#include <future>
#include <optional>
#include <string>
#include <vector>

namespace isola::cli::compat {

const char* order_name(close_order o) noexcept {
  return o == close_order::creation ? "creation" : "reverse";
}

namespace {

boost::json::array strings_of(const value& v) {
  boost::json::array out;
  for (const auto& item : v.as_list().items) out.emplace_back(item.as_str());
  return out;
}

/// The pure-Python module isola's workaround falls back to when `module` is blocked, or "".
std::string fallback_of(const std::string& module) {
  for (const auto& w : active_workarounds()) {
    if (w.module == module) return w.fallback;
  }
  return {};
}

}  // namespace

int run_probe_child(const child_options& o) {
  child_report report(o.report);
  std::string step = "start";
  try {
    report.begin(step);
    runtime_options ro;
    if (!o.path.empty()) ro.sys_path.push_back(o.path);
    std::optional<runtime> rt(std::in_place, ro);
    enable_faulthandler(*rt);
    report.end(step, {{"python", runtime::python_version()}});

    report.begin(step = "create");
    std::vector<interpreter> interps;
    interps.emplace_back();  // the default configuration: own GIL, strict extension policy
    interps.emplace_back();
    boost::json::array ids;
    for (auto& in : interps) {
      in.exec(embedded::compat_probe);
      ids.emplace_back(in.id());
    }
    report.end(step, {{"ids", ids}});

    // Both at once: the second import starts while the first may still run.
    report.begin(step = "import");
    std::vector<std::future<value>> imports;
    for (auto& in : interps) {
      imports.push_back(in.call_async("__main__:_isola_compat_import", o.module));
    }
    boost::json::array imported;
    bool usable = true;
    std::string blocked;
    for (auto& f : imports) {
      value v = f.get();
      const auto& items = v.as_list().items;
      const std::string& outcome = items.at(0).as_str();
      if (outcome == "blocked") blocked = items.at(3).as_str();
      usable = usable && (outcome == "ok" || outcome == "blocked");
      imported.push_back(strings_of(v));
    }
    report.end(step, {{"interpreters", imported}});

    if (usable && !o.import_only) {
      report.begin(step = "use");
      std::vector<std::future<value>> uses;
      for (auto& in : interps) {
        uses.push_back(
            in.call_async("__main__:_isola_compat_use", o.module, fallback_of(blocked)));
      }
      boost::json::array used;
      for (auto& f : uses) used.push_back(strings_of(f.get()));
      list pairs;
      for (const auto& w : active_workarounds()) {
        pairs.items.emplace_back(w.module + " " + w.fallback);
      }
      boost::json::array workarounds;
      for (auto& in : interps) {
        workarounds.push_back(strings_of(in.call("__main__:_isola_compat_workarounds", pairs)));
      }
      report.end(step, {{"interpreters", used}, {"workarounds", workarounds}});
    }

    report.begin(step = "teardown", {{"order", order_name(o.order)}});
    if (o.order == close_order::creation) {
      interps[0].close();
      interps[1].close();
    } else {
      interps[1].close();
      interps[0].close();
    }
    report.end(step, {{"abandoned", runtime::abandoned_interpreters()}});

    report.begin(step = "exit");
    rt.reset();
    report.end(step, {});
  } catch (const std::exception& e) {
    report.error(step, e.what());
    flush_logs();
    return 1;
  }
  flush_logs();
  return 0;
}

}  // namespace isola::cli::compat
