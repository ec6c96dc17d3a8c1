"""Batches of items sorted longest first that halve on out-of-memory, and progress in the log."""
from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

try:  # glibc: give the heap's free pages back to the system after each batch (see Batches)
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # another C library: nothing to do
    _malloc_trim = None


class Batches:
    """Runs a step on batches of items sorted longest first. On out-of-memory (``out_of_memory``: the
    backend's test of an error) the batch is retried at half the size, and that size is kept for the batches
    that follow. After each batch the heap's free pages go back to the system, so that activations freed but
    left fragmented in the heap do not add up over batches: peak memory is that of one batch."""

    def __init__(self, size: int, out_of_memory: Callable[[BaseException], bool]):
        self.size = size
        self.out_of_memory = out_of_memory

    def run(self, items, key, step):
        """Yield (batch, step(batch)) over all ``items`` in batches of at most ``self.size``."""
        order = sorted(items, key=key, reverse=True)
        start = 0
        while start < len(order):
            batch = order[start:start + self.size]
            try:
                result = step(batch)
            except RuntimeError as exc:  # torch.OutOfMemoryError is one
                if self.size == 1 or not self.out_of_memory(exc):
                    raise
                self.size //= 2
                log.warning("out of memory with a batch of %d; batch size now %d", len(batch), self.size)
                continue
            if _malloc_trim is not None:
                _malloc_trim(0)
            yield batch, result
            start += len(batch)


class Progress:
    """Logs items done of total and the rate, at most every few seconds."""

    def __init__(self, what: str, total: int, every: float = 5.0):
        self.what, self.total, self.every = what, total, every
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0

    def update(self, n: int) -> None:
        if not n:
            return
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            log.info("%s %d/%d (%.1f/s)", self.what, self.done, self.total, rate)
