"""An exclusive lock on a folder (a cache, a run): a second writer refuses instead of mixing."""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path

# Locks this process holds, for the fork hook below.
_HELD: weakref.WeakSet[FolderLock] = weakref.WeakSet()
_FORK_HOOK_REGISTERED = False


# The lock file a cache folder and a run folder each hold while one process writes there.
LOCK_FILE = ".lock"


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock."""


def _close_in_forked_child() -> None:
    """A forked child (a DataLoader worker, a joblib worker) inherits the holder's open lock
    file, and flock is released only once every descriptor of it is closed: left open, a
    killed run's workers would keep its folder busy until they notice and exit (about 5 s),
    and a resume at once would be refused. The child closes its copy at once; unlocking
    there instead would release the holder's lock."""
    for lock in list(_HELD):
        if lock.handle is not None:
            lock.handle.close()
            lock.handle = None


def _register_fork_hook() -> None:
    global _FORK_HOOK_REGISTERED
    if not _FORK_HOOK_REGISTERED:
        os.register_at_fork(after_in_child=_close_in_forked_child)
        _FORK_HOOK_REGISTERED = True


class FolderLock:
    """flock on `folder/.lock`, held from `acquire()` (or `with`) to `release()`. The kernel
    drops it when the holder dies (its forked children do not hold it), so a killed process
    never leaves a stale lock."""

    def __init__(self, folder: Path, busy_message: str) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.busy_message = busy_message
        self.handle = None

    def acquire(self) -> FolderLock:
        _register_fork_hook()
        handle = open(self.path, "a+")  # noqa: SIM115 (held open with the lock until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise FolderBusyError(f"{self.path.parent}: {self.busy_message}") from None
        self.handle = handle
        _HELD.add(self)
        return self

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
        _HELD.discard(self)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
