# Run in __main__ of both isola interpreters. Channels are looked up by name; the C++ side
# creates them (and so their capacity) and holds them for the length of a measurement.

import collections
import itertools
import time
import isola


def sched():
    """(ns this thread has run on a CPU, ns it has waited for one while runnable)."""
    try:
        with open('/proc/thread-self/schedstat') as f:
            on_cpu, waiting, _ = f.read().split()
        return int(on_cpu), int(waiting)
    except (OSError, ValueError):
        return time.thread_time_ns(), 0


def since(start):
    now = sched()
    return now[0] - start[0], now[1] - start[1]


# Each side of a transfer also returns how long its thread ran and how long it waited for a
# CPU: with the wall time, that tells a slow channel from a busy machine.

# Each transfer loop takes the call it makes per item (or per batch), so that the channel's
# runs and the no-channel runs below time the same loop.

def send_loop(send, n):
    start = sched()
    for i in range(n):
        send(i)
    return since(start)


def recv_loop(recv, n):
    start = sched()
    total = 0
    for _ in range(n):
        total += recv()
    return (total,) + since(start)


def send_batch_loop(send_many, n, batch):
    start = sched()
    for start_at in range(0, n, batch):
        send_many(range(start_at, min(start_at + batch, n)))
    return since(start)


def send_ints(name, n):
    return send_loop(isola.channel(name).send, n)


def recv_ints(name, n):
    return recv_loop(isola.channel(name).recv, n)


# The same loops with the sender paced: after every `burst` items it waits for the receiver
# to say it took them (through a second channel), so the channel never holds more than a
# burst. What the channel itself costs, without a backlog.

def send_ints_paced(name, n, burst):
    start = sched()
    send = isola.channel(name).send
    done = isola.channel(name + '-ack', 4).recv
    for first in range(0, n, burst):
        for i in range(first, min(first + burst, n)):
            send(i)
        done()
    return since(start)


def recv_ints_paced(name, n, burst):
    start = sched()
    recv = isola.channel(name).recv
    took = isola.channel(name + '-ack', 4).send
    total = 0
    for first in range(0, n, burst):
        for _ in range(first, min(first + burst, n)):
            total += recv()
        took(None)
    return (total,) + since(start)


def send_batches(name, n, batch):
    return send_batch_loop(isola.channel(name).send_many, n, batch)


def recv_batches(name, n, batch):
    start = sched()
    recv_many = isola.channel(name).recv_many
    got = total = 0
    while got < n:
        items = recv_many(batch)
        got += len(items)
        total += sum(items)
    return (total,) + since(start)


# The same loops with no channel between them: what CPython itself allows. The sender's
# send becomes a C method that keeps nothing (a set's discard, returning None as send does);
# the receiver's recv a C method that makes a new int per call (itertools.count), as recv
# does; the batch sender's send_many a C call that iterates its range and keeps nothing, the
# batch receiver's recv_many a new list of new ints. They run at the same time in the same
# two interpreters and are timed until both have returned.

def send_ints_nowhere(name, n):
    return send_loop(set().discard, n)


def recv_ints_nowhere(name, n):
    return recv_loop(itertools.count().__next__, n)


def send_batches_nowhere(name, n, batch):
    return send_batch_loop(collections.deque(maxlen=0).extend, n, batch)


def recv_batches_nowhere(name, n, batch):
    start = sched()
    got = total = 0
    while got < n:
        items = list(range(got, min(got + batch, n)))
        got += len(items)
        total += sum(items)
    return (total,) + since(start)


def one_thread_costs(rounds, n):
    """CPU time per item of send(i), recv() and the bare loop, each in a loop of n, in one
    thread through a channel that holds n: what each side costs without waiting, whatever else
    runs on the machine. Then the same loops with C methods of CPython in place of send and
    recv (a set's discard; itertools.count's __next__, which makes the same ints), for
    comparison."""
    ch = isola.Channel(n)
    send, recv, now = ch.send, ch.recv, time.thread_time_ns
    keep = set().discard
    r = range(n)
    sends = recvs = loops = keeps = makes = 0
    for _ in range(rounds):
        make = itertools.count().__next__
        t0 = now()
        for i in r:
            send(i)
        t1 = now()
        for _ in r:
            recv()
        t2 = now()
        for i in r:
            pass
        t3 = now()
        for i in r:
            keep(i)
        t4 = now()
        for _ in r:
            make()
        t5 = now()
        sends += t1 - t0
        recvs += t2 - t1
        loops += t3 - t2
        keeps += t4 - t3
        makes += t5 - t4
    k = rounds * n
    return sends / k, recvs / k, loops / k, keeps / k, makes / k


def echo(there, back):
    there, back = isola.channel(there), isola.channel(back)
    send = back.send
    count = 0
    try:
        for x in there:
            send(x)
            count += 1
    finally:
        back.close()  # a failure here ends ping() too
    return count


def ping(there, back, rounds, warmup):
    there, back = isola.channel(there), isola.channel(back)
    send, recv, now = there.send, back.recv, time.perf_counter_ns
    try:
        for i in range(warmup):
            send(i)
            if recv() != i:
                raise AssertionError('ping-pong: wrong echo in the warm-up')
        samples = [0] * rounds
        for i in range(rounds):
            t0 = now()
            send(i)
            r = recv()
            samples[i] = now() - t0
            if r != i:
                raise AssertionError(f'ping-pong: sent {i}, got {r!r} back')
    finally:
        there.close()  # ends echo()
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, len(samples) * 99 // 100)]


big = None


def make_big(size):
    global big
    big = bytes(size - 1) + b'\x07'


def send_big(name, as_bytes):
    """Sends the big bytes as bytes, or a memoryview of them; returns (t0, their address)."""
    ch = isola.channel(name)
    obj = big if as_bytes else memoryview(big)
    t0 = time.perf_counter_ns()
    ch.send(obj)
    return t0, isola._buffer_address(big)


def recv_big(name, as_bytes, size):
    """Receives what send_big sent, checks its type and size and reads its last byte."""
    data = isola.channel(name).recv()
    last = data[-1]
    t1 = time.perf_counter_ns()
    expected = bytes if as_bytes else memoryview
    if type(data) is not expected or last != 7 or len(data) != size:
        raise AssertionError(f'large transfer: got {type(data).__name__}, last byte {last}, '
                             f'length {len(data)}; expected {expected.__name__}')
    address = isola._buffer_address(data)
    del data
    return t1, address
