"""Helpers for test_pychannel.cpp: run inside isola interpreters."""
import isola


class Point:
    """A class that only pickling can carry."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def produce(name, start, count):
    """Sends start .. start+count-1 on the named channel."""
    ch = isola.channel(name)
    for i in range(start, start + count):
        ch.send(i)
    return count


def consume(name, stop_name):
    """Receives ints until the named channel is closed and drained; returns (count, sum,
    xor of (i * 2654435761) mod 2**63) so duplicates and losses both show."""
    ch = isola.channel(name)
    n = total = mix = 0
    for i in ch:
        n += 1
        total += i
        mix ^= (i * 2654435761) & 0x7FFFFFFFFFFFFFFF
    return [n, total, mix]


def recv_with_timeout(name, timeout):
    return isola.channel(name).recv(timeout=timeout)
