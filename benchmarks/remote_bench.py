"""Remote benchmark: training batches from a cache on S3 (moto's server on loopback) against
the same cache on the local disk, side by side in one run.

    python -m benchmarks.remote_bench [--samples 1024] [--shards 8] [--faces-frames 4
        --face-size 112] [--batch-size 32] [--shard-group 2] [--fetch-ahead 8]
        [--step-ms 0,40] [--rounds 3] [--out DIR] [--tiny]

It builds one cache of mel images and raw face crops (loader_bench's generator: 4 crops of
112 px make about 150 KB of faces a sample, this project's size of a cached video), uploads it
to a bucket of moto's S3 server, which runs in a process of its own on 127.0.0.1, and times
one pass of train.loader.ShardStream (mel + faces, every block's sums checked, as training
reads) in this process for each of:
- local: the cache's folder, files in the page cache;
- s3 cold, fetched ahead: the local folder emptied before the pass, so every shard is
  downloaded and checked (sha256) during it, `--fetch-ahead` shards ahead of the reader;
- s3 cold, not fetched ahead: the same, each shard downloaded when the reader first opens it;
- s3 warm: every shard already in the local folder (what holds and locks cost alone).
`--step-ms` waits that long after each batch (a training step on a GPU: the CPU is free
meanwhile), once per value; 0 measures the loader alone. Loaders take turns round by round in
a rotating order; a figure is the median over rounds, and each ratio to local is the median of
the per-round ratios. moto is a Python server and the client and server share this
machine's cores, so the cold figures are a floor for a real store, not S3's speed. Results go to
remote_bench.json. `--tiny`: a check that it runs, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.common import load_average, machine, parse_with_tiny
from benchmarks.loader_bench import split_sizes, write_cache

TINY = {"samples": 16, "shards": 4, "face_size": 32, "batch_size": 4, "rounds": 1,
        "step_ms": "0,5"}  # fmt: skip
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "avcache-bench", "AWS_SECRET_ACCESS_KEY": "avcache-bench",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
LOADERS = ("local", "s3 cold, fetched ahead", "s3 cold, not fetched ahead", "s3 warm")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add = parser.add_argument
    add("--samples", type=int, default=1024, help="samples of the cache")
    add("--shards", type=int, default=8, help="shards of the cache")
    add("--faces-frames", type=int, default=4, help="face crops a sample")
    add("--face-size", type=int, default=112, help="side of a face crop")
    add("--batch-size", type=int, default=32)
    add("--shard-group", type=int, default=2, help="LoaderPlan.shard_group")
    add("--fetch-ahead", type=int, default=8, help="data.remote_fetch_ahead of the s3 loaders")
    add("--step-ms", default="0,40", help="ms waited after each batch, one pass per value")
    add("--rounds", type=int, default=3, help="rounds (every loader once per round)")
    add("--seed", type=int, default=0)
    add("--out", type=Path, help="folder for the JSON and the data (default: temp, removed)")
    args = parse_with_tiny(parser, argv, TINY)
    args.step_ms = [float(v) for v in str(args.step_ms).split(",") if v]
    if args.samples < args.shards or min(args.rounds, args.batch_size, args.shard_group) < 1:
        parser.error("need a sample per shard, and positive --rounds, --batch-size, --shard-group")
    return args


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server in a process of its own on loopback; its endpoint URL."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto's S3 server did not start (pip install 'moto[server]')")
            time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait()


def upload(folder: Path, endpoint: str) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), "bench", f"cache/{path.relative_to(folder).as_posix()}")
    return "s3://bench/cache"


# ---------------------------------------------------------------- passes


def one_pass(shards: list, args, fetch_ahead: int, step_ms: float) -> float:
    """Samples a second over one pass of ShardStream (mel + faces) in this process."""
    from avcache.cache import schema
    from avcache.train.loader import LoaderPlan, ShardStream

    plan = LoaderPlan(args.batch_size, shard_group=args.shard_group, seed=args.seed)
    stream = ShardStream(shards, (schema.MEL, schema.FACES), plan, fetch_ahead=fetch_ahead)
    samples, clock = 0, time.perf_counter()
    for batch in stream:
        samples += int(batch[schema.LABEL].shape[0])
        time.sleep(step_ms / 1000)
    return samples / (time.perf_counter() - clock)


def loaders(local, remote, folder: Path, args) -> dict:
    """Each loader as (what to do before its pass, its shards, its fetch ahead)."""

    def empty() -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def fill() -> None:
        one_pass(remote.shards, args, args.fetch_ahead, 0.0)

    return {
        LOADERS[0]: (lambda: None, local.shards, 0),
        LOADERS[1]: (empty, remote.shards, args.fetch_ahead),
        LOADERS[2]: (empty, remote.shards, 0),
        LOADERS[3]: (fill, remote.shards, 0),
    }


def run_rounds(local, remote, folder: Path, args) -> dict:
    table = loaders(local, remote, folder, args)
    results = {}
    for step_ms in args.step_ms:
        rates: dict[str, list[float]] = {name: [] for name in table}
        for round_number in range(args.rounds):
            names = list(table)
            names = names[round_number % len(names) :] + names[: round_number % len(names)]
            for name in names:
                before, shards, ahead = table[name]
                before()
                rates[name].append(one_pass(shards, args, ahead, step_ms))
        results[f"step {step_ms:g} ms"] = summarise(rates)
    return results


def summarise(rates: dict[str, list[float]]) -> dict:
    local = rates[LOADERS[0]]
    return {
        name: {
            "samples_per_s": statistics.median(values),
            "rounds": values,
            "to_local": statistics.median(v / base for v, base in zip(values, local, strict=True)),
        }
        for name, values in rates.items()
    }


# ---------------------------------------------------------------- report


def print_report(results: dict) -> None:
    data = results["data"]
    print(f"cache: {data['samples']} samples in {data['shards']} shards, {data['mib']:.0f} MiB "
          f"({data['kib_per_sample']:.0f} KiB a sample); moto S3 on loopback")  # fmt: skip
    for phase, rows in results["passes"].items():
        print(f"\n{phase} after each batch")
        print(f"{'loader':<28}{'samples/s':>12}{'x local':>10}")
        for name, row in rows.items():
            print(f"{name:<28}{row['samples_per_s']:>12.0f}{row['to_local']:>10.2f}")
    where = results["machine"]
    print(f"\nmachine: {where['cpu_model']}, {where['cores']} cores; load average before "
          f"{results['load_before']}, after {results['load_after']}")  # fmt: skip


def run_all(args, root: Path) -> dict:
    from avcache.cache.reader import open_cache
    from avcache.cache.remote import RemoteSettings

    rng = np.random.default_rng(args.seed)
    local = write_cache(root / "cache", split_sizes(args.samples, args.shards), args, True, rng)
    mib = sum(entry.path.stat().st_size for entry in local.shards) / 2**20
    os.environ.update(CREDENTIALS)
    load_before = load_average()
    with s3_server() as endpoint:
        url = upload(root / "cache", endpoint)
        settings = RemoteSettings(root / "local", 2**40, endpoint)
        remote = open_cache(url, remote=settings)
        folder = remote.store.shard_root
        passes = run_rounds(local, remote, folder, args)
    return {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine(),
        "data": {
            "samples": args.samples,
            "shards": args.shards,
            "mib": mib,
            "kib_per_sample": mib * 1024 / args.samples,
        },
        "passes": passes,
        "load_before": load_before,  # 1, 5 and 15 minute load averages: was the machine quiet
        "load_after": load_average(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        root = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        if (root / "cache").exists():
            shutil.rmtree(root / "cache")
        shutil.rmtree(root / "local", ignore_errors=True)
        results = run_all(args, root)
        (root / "remote_bench.json").write_text(json.dumps(results, indent=2) + "\n")
        print_report(results)
        if args.out is None:
            print("(data and JSON removed: pass --out DIR to keep them)")
        else:
            print(f"results: {root / 'remote_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
