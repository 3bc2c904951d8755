"""A CPU-bound pure-Python workload for `isola run`: counts the primes below a bound by trial
division, which takes about 1-2 s in one interpreter at the default size.

    isola run -n 2 tools/demo/cpu_bound.py          # 2 interpreters, about the time of one
    isola run -n 2 tools/demo/cpu_bound.py 800000   # a bigger job (or a smaller one)
    isola run --shared-gil -n 2 tools/demo/cpu_bound.py   # one GIL: they take turns
    python3 tools/demo/cpu_bound.py                 # runs without isola too
"""

import sys
import time

DEFAULT_SIZE = 500_000

try:
    import isola

    WHERE = f"interpreter {isola.interpreter_id()}"
except ImportError:  # plain `python3 cpu_bound.py`
    WHERE = "python"


def count_primes(limit):
    """Primes below limit, by trial division with odd divisors: pure Python, no I/O."""
    count = 1 if limit > 2 else 0
    for n in range(3, limit, 2):
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


def main(argv):
    if len(argv) > 2:
        print(f"usage: {argv[0]} [SIZE]  (count the primes below SIZE, default {DEFAULT_SIZE})",
              file=sys.stderr)
        return 2
    try:
        limit = int(argv[1]) if len(argv) > 1 else DEFAULT_SIZE
    except ValueError:
        print(f"cpu_bound.py: SIZE must be a whole number, got {argv[1]!r}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    primes = count_primes(limit)
    took = time.perf_counter() - start
    print(f"[{WHERE}] {primes} primes below {limit} in {took:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
