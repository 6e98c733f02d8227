"""The local copies of a cache on S3 (cache/remote.py), against a real S3 server on loopback
(moto's, started here): the index, whole checked shards, the bounded folder and its holds."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from avcache.cache import open_cache, remote, schema
from avcache.cache.remote import (
    PARTIAL,
    Remote,
    RemoteCacheFull,
    RemoteError,
    RemoteSettings,
    ShardStore,
    is_remote,
)
from avcache.common.untrusted import CacheFormatError
from avcache.inspection.cli import main as inspect_main
from avcache.train.engine import LAST
from avcache.train.run import main as train_main
from tests.objectstore import S3Server, credentials
from tests.toy import REPO, kill_after_first_epoch, small_config, write_toy_cache


@pytest.fixture(scope="module")
def server():
    with credentials():
        s3 = S3Server()
        yield s3
        s3.stop()


@pytest.fixture(autouse=True)
def brief_wait(monkeypatch):
    """A download waits this long for held shards to be let go before it refuses."""
    monkeypatch.setattr(remote, "ROOM_WAIT", 1.0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Four shards of 12 samples: train 0-2, val 0."""
    root = tmp_path_factory.mktemp("toy")
    write_toy_cache(root, {"train": 36, "val": 12})
    return root


@pytest.fixture
def url(server, toy):
    return server.upload_folder(toy, server.new_bucket(), "caches/toy")


def shards(toy) -> list[dict]:
    return json.loads((toy / schema.INDEX_FILE).read_text())["shards"]


def store_of(server, url, tmp_path, limit=2**30) -> ShardStore:
    return ShardStore(Remote(url, server.endpoint), tmp_path / "local", limit)


def acquire(store, row):
    return store.acquire(row["path"], row["sha256"])


def leftovers(store) -> list[str]:
    return sorted(p.name for p in store.folder.rglob(f"*{PARTIAL}*"))


def test_urls_are_told_from_folders():
    assert is_remote("s3://bucket/cache") and is_remote("gs://b/c") and is_remote("S3://b")
    assert not is_remote("/data/cache") and not is_remote("cache") and not is_remote("file:///x")


def test_the_index_is_fetched_once_and_again_when_it_changes(server, url, toy, tmp_path):
    store = store_of(server, url, tmp_path)
    local = store.fetch_index()
    assert local.read_bytes() == (toy / schema.INDEX_FILE).read_bytes()
    first = local.stat().st_ino
    assert store.fetch_index().stat().st_ino == first, "an index that has not changed stays"
    server.put(f"{url}/{schema.INDEX_FILE}", b'{"changed": true}')
    assert store.fetch_index().read_bytes() == b'{"changed": true}'


def test_a_missing_index_names_the_url(server, tmp_path):
    store = store_of(server, f"s3://{server.new_bucket()}/nothing", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"s3://.*/nothing/index.json: no cache index"):
        store.fetch_index()


def test_a_shard_is_downloaded_whole_checked_and_then_read_locally(server, url, toy, tmp_path):
    store, row = store_of(server, url, tmp_path), shards(toy)[0]
    with acquire(store, row) as held:
        assert held.path.read_bytes() == (toy / row["path"]).read_bytes()
    server.client().delete_object(Bucket=url.split("/")[2],
                                  Key=url.split("/", 3)[3] + "/" + row["path"])  # fmt: skip
    with acquire(store, row) as held:  # no request: the local copy
        assert hashlib.sha256(held.path.read_bytes()).hexdigest() == row["sha256"]
    assert leftovers(store) == []


def test_the_least_recently_used_shard_that_nobody_holds_makes_room(server, url, toy, tmp_path):
    rows = shards(toy)[:3]
    sizes = [(toy / row["path"]).stat().st_size for row in rows]
    store = store_of(server, url, tmp_path, limit=sizes[0] + sizes[1] + max(sizes) // 2)
    a, b, c = rows
    for row in (a, b, a):  # a used last
        acquire(store, row).close()
    acquire(store, c).close()
    assert store.local(a["path"]).exists() and store.local(c["path"]).exists()
    assert not store.local(b["path"]).exists(), "b was the least recently used"


def test_held_shards_are_never_evicted_and_a_limit_too_small_is_refused(server, url, toy,
                                                                        tmp_path):  # fmt: skip
    a, b, c = shards(toy)[:3]
    size = max((toy / row["path"]).stat().st_size for row in (a, b, c))
    store = store_of(server, url, tmp_path, limit=2 * size + size // 2)
    held_a, held_b = acquire(store, a), acquire(store, b)
    with pytest.raises(RemoteCacheFull, match=r"s3://.*train-00002.h5: \d+ bytes do not fit "
                       r"within data.remote_cache_limit=\d+ .* it needs at least \d+"):  # fmt: skip
        acquire(store, c)
    assert held_a.path.exists() and held_b.path.exists() and leftovers(store) == []
    threading.Timer(0.3, held_a.close).start()  # let go while c waits for room
    with acquire(store, c):
        assert not held_a.path.exists() and held_b.path.exists()
    held_b.close()


def test_a_damaged_shard_in_the_bucket_is_refused_by_name_and_nothing_is_kept(
        server, url, toy, tmp_path):  # fmt: skip
    row = shards(toy)[1]
    data = bytearray((toy / row["path"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    server.put(f"{url}/{row['path']}", bytes(data))
    store = store_of(server, url, tmp_path)
    with pytest.raises(CacheFormatError, match=rf"{url}/{row['path']}: its sha256 is not the one"):
        acquire(store, row)
    assert not store.local(row["path"]).exists() and leftovers(store) == []


def test_a_store_that_stops_mid_download_is_a_clear_error_and_leaves_nothing(
        toy, tmp_path, monkeypatch):  # fmt: skip
    """A server of its own, stopped after the first chunk of a shard has arrived: the next
    request is refused for real."""
    row = shards(toy)[0]
    with credentials():
        s3 = S3Server()
        url = s3.upload_folder(toy, s3.new_bucket(), "c")
        store = store_of(s3, url, tmp_path)
        monkeypatch.setattr(remote, "CHUNK", 4096)
        opened = store.fs.open

        def open_then_stop(path, mode, **options):
            source = opened(path, mode, **options)
            read = source.read

            def first_then_stop(size):
                chunk = read(size)
                s3.stop()
                source.read = read
                return chunk

            source.read = first_then_stop
            return source

        monkeypatch.setattr(store.fs, "open", open_then_stop)
        failed = r"download failed after \d+ of \d+ bytes \(Could not connect.*\); nothing"
        with pytest.raises(RemoteError, match=rf"{url}/{row['path']}: {failed} of it was kept"):
            acquire(store, row)
    assert not store.local(row["path"]).exists() and leftovers(store) == []


HOLD = """
import os, sys
from avcache.cache.remote import Remote, ShardStore
store = ShardStore(Remote(sys.argv[1], sys.argv[2]), sys.argv[3], 2**30)
held = store.acquire(sys.argv[4], sys.argv[5])
print(os.stat(held.path).st_ino, flush=True)
sys.stdin.read()  # holds until killed
"""


def holder(server, url, tmp_path, row) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, url, server.endpoint,
                             str(tmp_path / "local"), row["path"], row["sha256"]],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip


def test_processes_that_want_one_shard_share_one_download_and_a_dead_ones_hold_goes(
        server, url, toy, tmp_path):  # fmt: skip
    """Two processes at once get the same file (one inode: nobody downloaded it twice);
    while either lives the shard cannot be evicted; once both are killed it can."""
    row, other = shards(toy)[0], shards(toy)[1]
    first, second = holder(server, url, tmp_path, row), holder(server, url, tmp_path, row)
    inodes = {first.stdout.readline().strip(), second.stdout.readline().strip()}
    size = (toy / row["path"]).stat().st_size
    store = store_of(server, url, tmp_path, limit=size + size // 2)
    assert len(inodes) == 1 and str(store.local(row["path"]).stat().st_ino) in inodes
    with pytest.raises(RemoteCacheFull):
        acquire(store, other)
    for process in (first, second):
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    with acquire(store, other):
        assert not store.local(row["path"]).exists()
    assert leftovers(store) == []


def test_the_endpoint_may_come_from_the_environment(server, url, toy, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    store = ShardStore(Remote(url), tmp_path / "local", 2**30)
    assert store.fetch_index().read_bytes() == (toy / schema.INDEX_FILE).read_bytes()


def test_a_store_is_sent_to_a_worker_without_its_connection(server, url, toy, tmp_path):
    """What a DataLoader worker is given: the store without its filesystem, which the worker
    makes for itself when it first reads."""
    store = store_of(server, url, tmp_path)
    store.fetch_index()
    sent = pickle.loads(pickle.dumps(store))
    assert sent._fs is None and store._fs is not None
    with acquire(sent, shards(toy)[2]) as held:
        assert held.path == store.local(shards(toy)[2]["path"])


def settings(server, tmp_path, limit=2**30) -> RemoteSettings:
    return RemoteSettings(tmp_path / "local", limit, server.endpoint)


def test_a_cache_on_s3_reads_as_its_local_twin(server, url, toy, tmp_path):
    cache = open_cache(url, remote=settings(server, tmp_path))
    local = open_cache(toy)
    assert cache.location == url and cache.splits == local.splits
    for ours, theirs in zip(cache.iter_samples(), local.iter_samples(), strict=True):
        assert ours.video_name == theirs.video_name
        assert np.array_equal(ours.mel, theirs.mel) and np.array_equal(ours.faces, theirs.faces)
    assert cache.sample("val005.mp4").video_name == "val005.mp4"


def test_inspect_names_the_url_and_verify_checks_the_stores_copies(
        server, url, toy, tmp_path, capsys, monkeypatch):  # fmt: skip
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AVCACHE_REMOTE_CACHE", str(tmp_path / "local"))
    assert inspect_main([url]) == 0
    assert capsys.readouterr().out.startswith(f"cache {url} (format")
    assert inspect_main([url, "verify"]) == 0
    assert "verified 4 shards: 0 damaged" in capsys.readouterr().out
    row = shards(toy)[1]
    server.put(f"{url}/{row['path']}", b"not the shard")  # replaced after it was downloaded
    assert inspect_main([url, "verify"]) == 1
    out = "".join(capsys.readouterr())
    assert f"{url}/{row['path']}: its sha256 is not the one the index lists" in out
    assert "verified 4 shards: 1 damaged" in out


def remote_options(server, tmp_path, limit="1G") -> list[str]:
    return [f"data.remote_cache={tmp_path / 'local'}", f"data.remote_cache_limit={limit}",
            f"data.remote_endpoint={server.endpoint}"]  # fmt: skip


def test_a_run_from_s3_trains_the_same_weights_as_from_its_local_twin_and_resumes(
        server, url, toy, tmp_path):  # fmt: skip
    """The same batches bit for bit: the order is the index's, wherever the shards lie. The
    limit is the least a run reading one shard at a time accepts, three of the four shards:
    shards are evicted and downloaded again as the epochs go."""
    options = small_config(**{"data.workers": 1, "data.shard_group": 1})
    size = max((toy / row["path"]).stat().st_size for row in shards(toy))
    local, remote_run, killed = tmp_path / "local-run", tmp_path / "remote-run", tmp_path / "k"
    assert train_main(["--cache", str(toy), "--out", str(local), *options]) == 0
    remote = [*options, *remote_options(server, tmp_path, str(3 * size))]
    assert train_main(["--cache", url, "--out", str(remote_run), *remote]) == 0
    kill_after_first_epoch(["--cache", url, "--out", str(killed), *remote], killed)
    assert train_main(["--resume", str(killed)]) == 0
    a = torch.load(local / LAST, weights_only=True)["model"]
    for run in (remote_run, killed):
        b = torch.load(run / LAST, weights_only=True)["model"]
        assert all(torch.equal(value, b[key]) for key, value in a.items()), run
    assert json.loads((remote_run / "cache.json").read_text())["path"] == url
    assert not list((tmp_path / "local").rglob(f"*{PARTIAL}"))


def test_a_limit_below_what_a_run_keeps_open_is_refused_with_the_size_it_needs(
        server, url, toy, tmp_path, capsys):  # fmt: skip
    run = tmp_path / "run"
    args = ["--cache", url, "--out", str(run), *small_config(**{"data.shard_group": 2}),
            *remote_options(server, tmp_path, "1K")]  # fmt: skip
    assert train_main(args) == 2
    error = capsys.readouterr().err
    assert "data.remote_cache_limit=1024 bytes is too small for s3://" in error
    assert "groups of data.shard_group=2" in error and "at least" in error
