"""Cross-interpreter queues with CPython 3.14's names, on isola's channels.

The names and signatures of concurrent.interpreters' queues (CPython 3.14), so that code
written for them moves over with one changed import:

    from concurrent.interpreters import _queues as queues   # CPython 3.14
    from test.support.interpreters import queues            # CPython 3.13
    from isola import queues                                # isola

A Queue is a handle to an isola channel (Queue.id is the channel's id): anything that holds
the channel, from Python or C++, sees the same items.
"""

import weakref as _weakref

import isola as _isola
from isola import (
    ItemInterpreterDestroyed,
    QueueEmpty,
    QueueError,
    QueueFull,
    QueueNotFoundError,
    UNBOUND,
    UNBOUND_ERROR,
    UNBOUND_REMOVE,
)

__all__ = [
    'UNBOUND', 'UNBOUND_ERROR', 'UNBOUND_REMOVE',
    'create', 'list_all',
    'Queue',
    'QueueError', 'QueueNotFoundError', 'QueueEmpty', 'QueueFull',
    'ItemInterpreterDestroyed',
]


def create(maxsize=0, *, unbounditems=UNBOUND):
    """Return a new cross-interpreter queue.

    The queue may be used to pass data safely between interpreters.  maxsize <= 0 means
    unbounded.

    "unbounditems" sets the default for Queue.put(); see that method for supported values.
    The default value is UNBOUND, which replaces the unbound item.
    """
    return _of_channel(_isola.Channel(maxsize, unbounditems=unbounditems))


def list_all():
    """Return a list of all open queues (every live channel of the process)."""
    return [_of_channel(ch) for ch in _isola.list_channels()]


_known_queues = _weakref.WeakValueDictionary()


def _of_channel(ch):
    try:
        return _known_queues[ch.id]
    except KeyError:
        self = object.__new__(Queue)
        self._id = ch.id
        self._channel = ch
        _known_queues[ch.id] = self
        return self


class Queue:
    """A cross-interpreter queue."""

    def __new__(cls, id, /):
        # There is only one instance for any given ID.
        if isinstance(id, int):
            id = int(id)
        else:
            raise TypeError(f'id must be an int, got {id!r}')
        try:
            return _known_queues[id]
        except KeyError:
            pass
        try:
            ch = _isola.Channel(id=id)
        except QueueNotFoundError:
            raise QueueNotFoundError(f'queue {id} not found') from None
        return _of_channel(ch)

    def __repr__(self):
        return f'{type(self).__name__}({self.id})'

    def __hash__(self):
        return hash(self._id)

    # for pickling: through the channel, which keeps the queue alive until it is unpickled
    def __reduce__(self):
        return (_of_channel, (self._channel,))

    @property
    def id(self):
        return self._id

    @property
    def unbounditems(self):
        return self._channel.unbounditems

    @property
    def maxsize(self):
        return self._channel.maxsize

    def empty(self):
        return self.qsize() == 0

    def full(self):
        return self._channel.full()

    def qsize(self):
        return self._channel.qsize()

    def put(self, obj, block=True, timeout=None, *, unbounditems=None):
        """Add the object to the queue.

        If "block" is true, this blocks while the queue is full.

        For most objects, the object received through Queue.get() will be a new one,
        equivalent to the original and not sharing any actual underlying data.  The notable
        exceptions include cross-interpreter types (like Queue) and memoryview, where the
        underlying data is actually shared.

        "unbounditems" controls the behavior of Queue.get() for the given object if the
        current interpreter (calling put()) is later destroyed.

        If "unbounditems" is None (the default) then it uses the queue's default, set with
        create(), which is usually UNBOUND.

        If "unbounditems" is UNBOUND_ERROR then get() will raise an ItemInterpreterDestroyed
        exception if the original interpreter has been destroyed.  This does not otherwise
        affect the queue; the next call to get() will work like normal, returning the next
        item in the queue.

        If "unbounditems" is UNBOUND_REMOVE then the item is skipped by get() once the
        original interpreter is destroyed.  Be aware that this will introduce an imbalance
        between put() and get() calls.

        If "unbounditems" is UNBOUND then it is returned by get() in place of the unbound
        item.
        """
        if not block:
            return self.put_nowait(obj, unbounditems=unbounditems)
        if timeout is not None and timeout < 0:
            raise ValueError('timeout value must be non-negative')
        self._channel.put(obj, True, timeout, unbounditems=unbounditems)

    def put_nowait(self, obj, *, unbounditems=None):
        self._channel.put_nowait(obj, unbounditems=unbounditems)

    def get(self, block=True, timeout=None):
        """Return the next object from the queue.

        If "block" is true, this blocks while the queue is empty.

        If the next item's original interpreter has been destroyed then the "next object" is
        determined by the value of the "unbounditems" argument to put().
        """
        if not block:
            return self.get_nowait()
        if timeout is not None and timeout < 0:
            raise ValueError('timeout value must be non-negative')
        return self._channel.get(True, timeout)

    def get_nowait(self):
        """Return the next object from the queue.

        If the queue is empty then raise QueueEmpty.  Otherwise this is the same as get().
        """
        return self._channel.get_nowait()
