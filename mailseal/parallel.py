"""Spread work that releases the GIL over the cores.

ChaCha20-Poly1305 (cryptography) and base64 (pybase64) drop the GIL while
they run, so threads give real parallelism for large messages on a
multi-core machine. The window bounds how many results wait in memory.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from itertools import chain
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

T = TypeVar("T")
R = TypeVar("R")

_WORKERS = max(1, min(4, os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    from concurrent.futures import ThreadPoolExecutor  # only once a big message needs it

    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="mailseal-cpu")
        return _pool


def imap(fn: Callable[[T], R], items: Iterable[T], window: int = 2 * _WORKERS,
         inline: int = 0) -> Iterator[R]:
    """fn over items, in order, at most `window` results ahead of the consumer.

    With one core it is a plain loop: no threads, no overhead. So is the
    first item when it is shorter than `inline` bytes: a small message is
    done before a thread could even be woken.
    """
    iterator = iter(items)
    if _WORKERS == 1:
        yield from map(fn, iterator)
        return
    first = next(iterator, None)
    if first is None:
        return
    if inline and len(first) < inline:
        yield fn(first)
        yield from map(fn, iterator)  # what follows a short item is short too
        return
    pending: deque[Future[R]] = deque()
    pool = _executor()
    try:
        for item in chain([first], iterator):
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
