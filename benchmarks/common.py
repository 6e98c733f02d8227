"""What every benchmark needs: the machine it ran on, how busy it was, medians over rounds,
and the page cache (read files in, evict them, see how much is resident)."""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import mmap
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

PACKAGES = ("numpy", "h5py", "torch", "torchvision", "timm", "opencv-python-headless", "librosa",
            "soxr", "joblib", "simplejpeg", "facenet-pytorch", "moviepy")  # fmt: skip


def parse_with_tiny(parser: argparse.ArgumentParser, argv: list[str] | None,
                    tiny: dict[str, object]) -> argparse.Namespace:  # fmt: skip
    """argv parsed with a `--tiny` flag that makes `tiny` the defaults (options given still
    win): every phase on a handful of samples, so that a test can run the whole benchmark in
    seconds (tests/test_benchmarks.py). It checks that the benchmark works; it measures nothing."""
    sizes = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in tiny.items())
    parser.add_argument("--tiny", action="store_true",
                        help=f"a check that it runs, timing nothing: {sizes}")  # fmt: skip
    if parser.parse_known_args(argv)[0].tiny:
        parser.set_defaults(**tiny)
    return parser.parse_args(argv)


def machine() -> dict:
    """The machine and software a figure comes from."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                  if line.startswith("Model name")), platform.processor())  # fmt: skip
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=False)
    import h5py  # only here: not every benchmark reads HDF5

    return {
        "cpu_model": model,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "ffmpeg": ffmpeg.stdout.splitlines()[0] if ffmpeg.stdout else None,
        "hdf5": h5py.version.hdf5_version,
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine_busy_seconds() -> float:
    """CPU seconds every process of the machine has used since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()  # warm: pages, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_rate(count: int, call, rounds: int) -> float:
    """Items per second: the median over rounds of `count / seconds of call()`."""
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def read_all(paths: Iterable[Path]) -> None:
    """Pull every byte of the files into the page cache."""
    buffer = bytearray(8 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def evict(paths: Iterable[Path]) -> None:
    """Drop the files' clean pages from the page cache (no root needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def resident_pages(path: Path, libc: ctypes.CDLL) -> tuple[int, int]:
    """(pages of the file in the page cache, pages of the file), from mincore(2)."""
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    if not size:
        return 0, 0
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    finally:
        os.close(fd)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), f"mmap {path}")
    vector = np.zeros(pages, np.uint8)
    try:
        if libc.mincore(address, size, vector.ctypes.data) != 0:
            raise OSError(ctypes.get_errno(), f"mincore {path}")
    finally:
        libc.munmap(address, size)
    return int(np.count_nonzero(vector & 1)), pages


def resident_share(paths: Iterable[Path]) -> float:
    libc = _libc()
    counts = [resident_pages(Path(p), libc) for p in paths]
    return sum(c[0] for c in counts) / max(sum(c[1] for c in counts), 1)
