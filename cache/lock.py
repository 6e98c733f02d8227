"""An exclusive lock on a folder (a cache, a run): a second writer refuses instead of mixing."""

from __future__ import annotations

import fcntl
from pathlib import Path

from avcache.cache import schema


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock."""


class FolderLock:
    """flock on `folder/.lock`, held from `acquire()` (or `with`) to `release()`. The kernel
    drops it when the holder dies, so a killed process never leaves a stale lock."""

    def __init__(self, folder: Path, busy_message: str) -> None:
        self.path = Path(folder) / schema.LOCK_FILE
        self.busy_message = busy_message
        self.handle = None

    def acquire(self) -> FolderLock:
        handle = open(self.path, "a+")  # noqa: SIM115 (held open with the lock until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise FolderBusyError(f"{self.path.parent}: {self.busy_message}") from None
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
