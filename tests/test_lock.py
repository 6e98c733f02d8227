"""The folder lock ends with its holder, whatever the holder's forked workers still do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from avcache.common.lock import FolderBusyError, FolderLock

# Holds the lock, forks a worker that outlives it (as DataLoader workers outlive a killed
# run for a few seconds), prints the worker's pid, then waits to be killed.
HOLDER = textwrap.dedent("""
    import multiprocessing, sys, time
    from avcache.common.lock import FolderLock

    lock = FolderLock(sys.argv[1], "held").acquire()
    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))
    worker.start()
    print(worker.pid, flush=True)
    time.sleep(120)
""")


def test_a_second_lock_of_the_same_folder_is_refused(tmp_path):
    with (FolderLock(tmp_path, "held by the test"),
          pytest.raises(FolderBusyError, match="held by the test")):  # fmt: skip
        FolderLock(tmp_path, "held by the test").acquire()
    FolderLock(tmp_path, "free again").acquire().release()


def test_the_lock_is_free_once_its_holder_is_killed_while_its_forked_worker_lives(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    worker = int(holder.stdout.readline())
    try:
        with pytest.raises(FolderBusyError):
            FolderLock(tmp_path, "held").acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        os.kill(worker, 0)  # the worker is still alive
        FolderLock(tmp_path, "held").acquire().release()
    finally:
        holder.kill()
        os.kill(worker, signal.SIGKILL)
