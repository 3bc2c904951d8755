"""Helpers the pool tests (test_pool.cpp) run as tasks. test/py is on every sys.path.

Module state (calls, recorded) is per interpreter: every pool interpreter imports its own copy.
File descriptors are process-wide, so pipes made by the C++ test work as gates and signals
across interpreters."""

import os
import threading
import time

import isola

calls = 0
recorded = []


def plus_one(x):
    """x + 1, counting the calls this interpreter ran (exactly-once checks)."""
    global calls
    calls += 1
    return x + 1


def call_count():
    return calls


def whoami():
    return isola.interpreter_id()


def native_thread_id():
    return threading.get_native_id()


def raise_value_error(message):
    raise ValueError(message)


def times_ten_unless_13(x):
    if x == 13:
        raise ValueError("13 is not welcome here")
    return x * 10


def record(x):
    """Appends x to this interpreter's `recorded` list (run order checks)."""
    recorded.append(x)
    return x


def write_byte(fd):
    """A visible side effect: one byte into a pipe the test owns."""
    os.write(fd, b"x")
    return True


def wait_gate(started_fd, gate_fd, result=None):
    """Says it started (a byte on started_fd), then blocks (GIL released) until the test
    writes a byte to the gate or closes its write end. Returns result."""
    os.write(started_fd, b"s")
    os.read(gate_fd, 1)
    return result


def started_then_sleep(started_fd, seconds):
    """Says it started (a byte on started_fd), then sleeps (isola's sleep: an interrupt wakes
    it)."""
    os.write(started_fd, b"s")
    time.sleep(seconds)


def sleep_then(seconds, result):
    time.sleep(seconds)
    return result


def stamp_loop_ready(ready_fd, start_fd, n):
    """Says it is ready, waits for the start byte, then busy-works n steps and returns a
    time.perf_counter_ns() stamp (CLOCK_MONOTONIC, one clock per process) after each step."""
    os.write(ready_fd, b"r")
    os.read(start_fd, 1)
    stamps = []
    x = 0
    for _ in range(n):
        for j in range(100):
            x += j
        stamps.append(time.perf_counter_ns())
    return stamps


def live_interpreter_ids():
    """Ids of every interpreter alive in the process (CPython's own list, which also holds
    interpreters isola no longer tracks, such as an abandoned stuck one)."""
    try:
        import _interpreters as m  # 3.13
    except ImportError:
        import _xxsubinterpreters as m  # 3.12
    out = []
    for item in m.list_all():
        if isinstance(item, tuple):
            item = item[0]
        out.append(int(item))
    return out


initialised_in = None


def init_hook():
    """For pool_options.init_call: remembers which interpreter ran it."""
    global initialised_in
    initialised_in = isola.interpreter_id()


def initialised():
    return initialised_in


def busy(seconds, started_fd=-1):
    """Runs Python code (holding the GIL) for `seconds`; first says it started if given a fd."""
    if started_fd >= 0:
        os.write(started_fd, b"s")
    t = time.monotonic()
    while time.monotonic() - t < seconds:
        pass
    return "done"
