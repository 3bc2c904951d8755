"""Helpers the C++ tests call through interpreter::call (test/py is on every sys.path)."""

import os
import time


def add(a, b):
    return a + b


def describe(*args, **kwargs):
    """Echoes its arguments so a test can check how they arrived."""
    return {"args": args, "kwargs": kwargs}


class Counter:
    count = 0

    @classmethod
    def bump(cls, by=1):
        cls.count += by
        return cls.count


def stamp_loop(start_fd, n):
    """Waits for one byte on start_fd (a start barrier the C++ test releases), then busy-works
    n steps and returns a time.perf_counter_ns() stamp taken after each step. perf_counter is
    CLOCK_MONOTONIC, one clock for the whole process, so stamps of interpreters compare."""
    os.read(start_fd, 1)
    stamps = []
    x = 0
    for _ in range(n):
        for j in range(100):
            x += j
        stamps.append(time.perf_counter_ns())
    return stamps


def nested_list(depth):
    """A list nested depth levels deep: [[[...]]]."""
    v = []
    for _ in range(depth - 1):
        v = [v]
    return v


def same(a, b):
    """Strict structural equality: same types all the way down (True is not 1, 1.0 is not 1,
    a tuple is not a list), dict items in the same order, NaN equals NaN, -0.0 is not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if a != a:
            return b != b
        return a == b and str(a) == str(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    return a == b
