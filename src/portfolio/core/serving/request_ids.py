"""Request ids the API generates when a request brings none (``X-Request-ID``)."""

from __future__ import annotations

import itertools
import os


class RequestIds:
    """32 hex digits, like ``uuid4().hex``: a random 64-bit prefix per process, then a counter.

    Why not ``uuid4()`` per request: it reads the kernel's random source each time (~3.4 µs, a
    system call that gives up the interpreter lock, which the prediction log's writer thread may
    then hold), and ids need only be unique, not unpredictable. Two processes share a prefix
    with probability 2^-64; a forked child draws its own.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count()

    def __call__(self) -> str:
        """The next id.

        Returns:
            32 lower-case hex digits, never repeated in this process.
        """
        return f"{self._prefix}{next(self._count):016x}"


new_request_id = RequestIds()
