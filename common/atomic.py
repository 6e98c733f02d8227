"""Files that readers see whole or not at all: every file avcache writes goes through here.

A file is written under a temporary name beside its target (`NAME.PID.partial`: the pid keeps
a resumed run and a worker orphaned by a killed one off each other's bytes), fsynced, renamed
over the target, and the folder is fsynced so that the rename itself survives a power cut.
A failed write removes its temporary file and leaves the target as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    """Where `path` is written before it is published."""
    return path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(partial: Path, path: Path) -> None:
    """Make a fully written temporary file the target: fsync, rename, fsync the folder."""
    fsync_path(partial)
    os.replace(partial, path)
    fsync_path(path.parent)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """The temporary path to write `path`'s new content to; published when the block ends,
    removed if it raises."""
    path = Path(path)
    partial = partial_path(path)
    try:
        yield partial
        publish(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, payload: dict | list) -> None:
    """JSON as avcache writes it: UTF-8, one space of indent, a final newline."""
    write_text_atomic(path, json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
