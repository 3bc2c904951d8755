// N interpreters serve lookups from one shared table: the table (word -> (rank, weight, tag))
// is built and published once with isola.share(); every worker interpreter then reads the very
// same objects, in parallel, with no copy of its own. Each worker answers a stream of random
// queries; the program checks every answer against the table and prints how much memory the
// table took and how many lookups per second the workers made.
//
//   shared_table [-n WORKERS] [--words N] [--queries Q]
#include <isola/isola.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr const char* code = R"py(
import isola, random

def publish(n):
    """Builds the table in this interpreter and publishes it; returns its size."""
    table = {f'word{i}': (i, 1.0 / (i + 1), 'common' if i < n // 10 else 'rare')
             for i in range(n)}
    isola.share('example.words', table)
    return len(table)

def serve(n, queries, seed):
    """Answers `queries` random lookups from the shared table; returns (answered, wrong)."""
    table = isola.shared('example.words')
    rng = random.Random(seed)
    wrong = 0
    for _ in range(queries):
        i = rng.randrange(n)
        rank, weight, tag = table[f'word{i}']
        if rank != i or weight != 1.0 / (i + 1) or tag != ('common' if i < n // 10 else 'rare'):
            wrong += 1
    return queries, wrong
)py";

double rss_mib() {
  std::ifstream statm("/proc/self/statm");
  long long size = 0, resident = 0;
  statm >> size >> resident;
  return static_cast<double>(resident) * 4096.0 / (1024.0 * 1024.0);
}

}  // namespace

int main(int argc, char** argv) {
  unsigned workers = 4;
  long long words = 200'000, queries = 200'000;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string opt = argv[i];
    const long long v = std::atoll(argv[i + 1]);
    if (v <= 0) {
      std::fprintf(stderr, "shared_table: %s needs a positive number, not '%s'\n", opt.c_str(),
                   argv[i + 1]);
      return 2;
    }
    if (opt == "-n") {
      workers = static_cast<unsigned>(v);
    } else if (opt == "--words") {
      words = v;
    } else if (opt == "--queries") {
      queries = v;
    } else {
      std::fprintf(stderr, "usage: shared_table [-n WORKERS] [--words N] [--queries Q]\n");
      return 2;
    }
  }

  isola::runtime rt;
  const double before = rss_mib();
  {
    isola::interpreter publisher;  // ends right after publishing: the table stays
    publisher.exec(code);
    publisher.call("__main__:publish", words);
  }
  std::printf("published %lld words: resident memory +%.0f MiB\n", words, rss_mib() - before);

  std::vector<std::unique_ptr<isola::interpreter>> pool;
  for (unsigned w = 0; w < workers; ++w) {
    pool.push_back(std::make_unique<isola::interpreter>());
    pool.back()->exec(code);
  }
  std::printf("%u workers started: resident memory +%.0f MiB in all\n", workers,
              rss_mib() - before);

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::future<isola::value>> answers;
  for (unsigned w = 0; w < workers; ++w) {
    answers.push_back(
        pool[w]->call_async("__main__:serve", words, queries, static_cast<long long>(w)));
  }
  long long answered = 0, wrong = 0;
  for (auto& a : answers) {
    const isola::value r = a.get();
    answered += r.as_tuple().items.at(0).as_int();
    wrong += r.as_tuple().items.at(1).as_int();
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%lld lookups by %u workers in %.2f s (%.0f per second), %lld wrong\n", answered,
              workers, s, static_cast<double>(answered) / s, wrong);
  return wrong == 0 ? 0 : 1;
}
