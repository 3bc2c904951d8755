// A word-count pipeline over channels: a producer interpreter sends batches of text lines, N
// worker interpreters (each with its own GIL, so they run in parallel) take batches as they
// come free and count their words, then send their partial counts to a collector interpreter,
// which merges them. Closing a channel ends the loops that read it.
//
//   producer --"pipeline.lines"--> worker 1..N --"pipeline.counts"--> collector
//
//   pipeline [-n WORKERS] [--lines N] [--batch B] [FILE]
#include <isola/isola.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

namespace {

/// Code run in every interpreter's __main__; each uses its part.
constexpr const char* pipeline_code = R"py(
import collections
import heapq
import random
import time
import isola


def top10(counts):
    """The 10 most frequent words, ties broken by the word, so that any merge order agrees."""
    return heapq.nsmallest(10, counts.items(), key=lambda wc: (-wc[1], wc[0]))


# ---- producer ----

lines = []


def load(path, count):
    """Reads the lines of `path`, or makes `count` lines of made-up words (the same every run)."""
    global lines
    if path:
        with open(path, encoding='utf-8', errors='replace') as f:
            lines = f.read().splitlines()
        return len(lines)
    rng = random.Random(1234)
    syllables = ['ka', 'lo', 'mi', 'ne', 'ru', 'sa', 'ti', 'vo', 'ze', 'po', 'an', 'el']
    vocabulary = sorted({''.join(rng.choices(syllables, k=rng.randint(2, 5)))
                         for _ in range(6000)})
    rng.shuffle(vocabulary)
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf: a few words dominate
    words = rng.choices(vocabulary, weights, k=count * 12)
    lines = [' '.join(words[i * 12:i * 12 + rng.randint(4, 12)]) for i in range(count)]
    return len(lines)


def produce(batch):
    """Sends the lines in batches (lists of str), then closes the channel: the workers'
    loops end once they have taken what is queued."""
    out = isola.channel('pipeline.lines')
    for start in range(0, len(lines), batch):
        out.send(lines[start:start + batch])
    out.close()


def direct_count():
    """The check: the same count, done directly in one interpreter (and how long it took)."""
    t0 = time.perf_counter()
    counts = collections.Counter()
    for line in lines:
        counts.update(line.split())
    took = time.perf_counter() - t0
    return sum(counts.values()), top10(counts), len(counts), took


# ---- workers ----

def work():
    """Counts words until the lines channel is closed and drained, then sends its counts."""
    source, sink = isola.channel('pipeline.lines'), isola.channel('pipeline.counts')
    counts = collections.Counter()
    done = 0
    for batch in source:  # whichever worker is free takes the next batch
        for line in batch:
            counts.update(line.split())
        done += len(batch)
    sink.send(dict(counts))  # a plain dict of str -> int travels as a value
    return done


# ---- collector ----

def collect():
    """Merges partial counts until the counts channel is closed and drained."""
    total = collections.Counter()
    for partial in isola.channel('pipeline.counts'):
        total.update(partial)
    return sum(total.values()), top10(total), len(total)
)py";

struct options {
  unsigned workers = std::max(1u, std::thread::hardware_concurrency());
  long long lines = 200000;
  long long batch = 1000;
  std::string path;  ///< empty: a synthetic corpus
};

void usage(std::FILE* to) {
  std::fprintf(to,
               "Usage: pipeline [-n WORKERS] [--lines N] [--batch B] [FILE]\n"
               "Counts the words of FILE (default: %lld synthetic lines) with a producer, N\n"
               "worker interpreters and a collector wired by channels; prints the top 10 words,\n"
               "the total and the throughput, and checks the total against a direct count.\n"
               "  -n, --workers N  worker interpreters (default: cores, here %u)\n"
               "  --lines N        lines of the synthetic corpus (no FILE)\n"
               "  --batch B        lines per message (default 1000)\n"
               "  -h, --help       this help\n",
               options{}.lines, options{}.workers);
}

long long positive(const char* opt, const char* text) {
  char* end = nullptr;
  long long v = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || v < 1) {
    std::fprintf(stderr, "pipeline: %s needs a positive whole number, not '%s'\n", opt, text);
    std::exit(2);
  }
  return v;
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "pipeline: %s needs a value; see --help\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      usage(stdout);
      std::exit(0);
    } else if (a == "-n" || a == "--workers") {
      o.workers = static_cast<unsigned>(positive("--workers", value()));
    } else if (a == "--lines") {
      o.lines = positive("--lines", value());
    } else if (a == "--batch") {
      o.batch = positive("--batch", value());
    } else if (!a.starts_with("-") && o.path.empty()) {
      o.path = a;
    } else {
      std::fprintf(stderr, "pipeline: unexpected argument '%s'; see --help\n", a.c_str());
      std::exit(2);
    }
  }
  if (!o.path.empty() && !std::ifstream(o.path)) {
    std::fprintf(stderr, "pipeline: cannot read '%s'\n", o.path.c_str());
    std::exit(2);
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  isola::runtime rt;

  // Named channels are found by name from Python; these handles keep them alive meanwhile.
  // Bounds keep memory flat: the producer waits when the workers fall behind.
  auto lines = isola::channel::open("pipeline.lines", 4 * o.workers);
  auto counts = isola::channel::open("pipeline.counts", 64);

  isola::interpreter producer, collector;
  std::vector<isola::interpreter> workers(o.workers);
  for (auto* i : {&producer, &collector}) i->exec(pipeline_code);
  for (auto& w : workers) w.exec(pipeline_code);

  const auto n_lines =
      producer.call("__main__:load", o.path, static_cast<std::int64_t>(o.lines)).as_int();
  std::printf("%lld lines, %u workers, batches of %lld lines\n", static_cast<long long>(n_lines),
              o.workers, o.batch);

  const auto t0 = std::chrono::steady_clock::now();
  auto merged = collector.call_async("__main__:collect");
  std::vector<std::future<isola::value>> done;
  for (auto& w : workers) done.push_back(w.call_async("__main__:work"));
  // produce() returns once every batch is queued and the lines channel is closed.
  producer.call("__main__:produce", static_cast<std::int64_t>(o.batch));
  std::vector<long long> per_worker;
  for (auto& d : done) per_worker.push_back(d.get().as_int());  // all counts are sent now
  counts.close();  // so the collector's loop ends
  const isola::value result = merged.get();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const auto& r = result.as_tuple().items;  // (total words, [(word, count)...], distinct)
  std::printf("top 10 words:\n");
  for (const auto& pair : r.at(1).as_list().items) {
    const auto& wc = pair.as_tuple().items;
    std::printf("  %-12s %lld\n", wc.at(0).as_str().c_str(),
                static_cast<long long>(wc.at(1).as_int()));
  }
  std::printf("lines per worker:");
  long long processed = 0;
  for (long long n : per_worker) {
    std::printf(" %lld", n);
    processed += n;
  }
  std::printf("\n");
  const auto total = r.at(0).as_int();
  std::printf("%lld words (%lld distinct) in %.3f s: %.0f lines/s\n",
              static_cast<long long>(total), static_cast<long long>(r.at(2).as_int()), seconds,
              static_cast<double>(n_lines) / seconds);

  // The check: the same count done directly, in one interpreter.
  const isola::value direct = producer.call("__main__:direct_count");
  const auto& d = direct.as_tuple().items;
  const bool ok = d.at(0).as_int() == total && d.at(2).as_int() == r.at(2).as_int() &&
                  d.at(1).repr() == r.at(1).repr() && processed == n_lines;
  std::printf("check: %s (direct count: %lld words, %lld distinct; workers saw %lld of %lld "
              "lines)\n",
              ok ? "ok" : "MISMATCH", static_cast<long long>(d.at(0).as_int()),
              static_cast<long long>(d.at(2).as_int()), processed,
              static_cast<long long>(n_lines));
  std::printf("the same count directly, in one interpreter: %.3f s (%.0f lines/s)\n",
              d.at(3).as_float(), static_cast<double>(n_lines) / d.at(3).as_float());

  // End the interpreters newest first (a vector would end its elements oldest first, an order
  // in which CPython 3.13.0 can crash tearing down extension modules).
  for (auto w = workers.rbegin(); w != workers.rend(); ++w) w->close();
  return ok ? 0 : 1;
}  // then the collector, the producer, and the runtime
