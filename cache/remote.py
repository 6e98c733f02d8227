"""Caches on object storage: `s3://bucket/prefix`, or any URL an installed fsspec filesystem
understands, read through a bounded local folder.

Nothing is opened over the network. The index comes first, fetched once per node (one
process downloads it, the others wait for it, then find it current by its ETag); shards
are downloaded whole, to a partial file beside their place, checked against the sha256 the
index lists, then renamed, so h5py opens only whole local files. The local folder's shards
(every remote cache under one `root`) are kept within `limit` bytes by evicting the least
recently used, never one a process holds: holds are shared flocks on the shard file, which
the kernel counts across every process of the node and drops when a process dies, so a
crash leaves no count behind. Only shards downloaded here are ever evicted: each has its
remote copy.

S3 credentials come from the standard AWS chain (environment, ~/.aws, instance roles); an
S3-compatible store (MinIO, Ceph) is reached through `endpoint`, or AWS_ENDPOINT_URL (or
AWS_ENDPOINT_URL_S3), which botocore reads itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from avcache.cache import schema
from avcache.common.untrusted import MAX_JSON_BYTES, REBUILD, CacheFormatError, printable

PARTIAL = ".partial"  # a download under way (or cut short): never opened, never counted whole
DOWNLOADING = ".download"  # beside a shard: the lock its one downloader on the node holds
ETAG = ".etag"  # beside a fetched index: the ETag of the object it was fetched from
SPACE_LOCK = ".space.lock"  # in the root: one process at a time counts and frees space
INDEX_LOCK = ".index.lock"  # in a cache's folder: one process at a time fetches its index
SHARDS = "shards"  # in a cache's folder: its downloaded shards, by their path in the cache
SOURCE = "url"  # in a cache's folder: the URL it is the copy of
CHUNK = 8 * 2**20  # bytes read from the store per request while a shard downloads
ROOM_WAIT = 30.0  # seconds a download waits for held shards to be let go, before refusing
ROOM_POLL = 0.25
LOCAL_SCHEMES = ("", "file", "local")


class RemoteError(OSError):
    """The store could not be read (no such bucket, connection refused, cut short)."""


class RemoteSettingsError(ValueError):
    """How the local copies of remote caches are to be kept is malformed (an environment
    variable's value)."""


class RemoteCacheFull(ValueError):
    """The local folder's limit cannot fit a shard beside the shards that are held."""


def is_remote(path: object) -> bool:
    """Whether a cache path names an object store (`scheme://...`) rather than a folder."""
    scheme, sep, _ = str(path).partition("://")
    return bool(sep) and scheme.lower() not in LOCAL_SCHEMES


def location(text: str) -> Path | str:
    """A cache argument as given: a URL stays text (a Path would fold its `//`), anything
    else is a folder."""
    return text.rstrip("/") if is_remote(text) else Path(text)


@dataclass(frozen=True)
class Remote:
    """Where a cache lies in a store, and how to reach it."""

    url: str
    endpoint: str | None = None  # an S3-compatible store's URL (MinIO: http://host:9000)

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))

    def filesystem(self):
        """This process's fsspec filesystem for the URL (fsspec keeps one instance per set of
        arguments, so credentials are resolved once per process, not once per shard)."""
        import fsspec

        options = {}
        if self.endpoint and self.url.lower().startswith(("s3://", "s3a://")):
            options["client_kwargs"] = {"endpoint_url": self.endpoint}
        try:
            return fsspec.core.url_to_fs(self.url, **options)[0]
        except (ImportError, ValueError) as error:
            raise RemoteError(f"{self.url}: no filesystem for this URL ({error}); for s3:// "
                              "install s3fs (pip install s3fs)") from None  # fmt: skip

    def of(self, relative: str) -> str:
        return f"{self.url}/{relative}"


# Where the local copies go and how large they may grow, unless a config or a flag says.
ROOT_VARIABLE, LIMIT_VARIABLE = "AVCACHE_REMOTE_CACHE", "AVCACHE_REMOTE_CACHE_LIMIT"
DEFAULT_LIMIT = "64G"
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: object) -> int:
    """Bytes from `123`, `500M`, `64G`, `1.5T` (binary units; a trailing B or iB is allowed)."""
    value = str(text).strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (value[:-1], value[-1]) if value[-1:] in UNITS else (value, "")
    try:
        size = float(number) * UNITS[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a size (such as 500M, 64G or 1.5T)") from None
    if not size > 0 or size == float("inf"):
        raise ValueError(f"{text!r}: a size must be positive")
    return int(size)


def default_root() -> Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "avcache" / "remote"


@dataclass(frozen=True)
class RemoteSettings:
    """Where the local copies of caches on object storage go (`root`, shared by all of
    them), the bytes their shards may take there (`limit`) and an S3-compatible endpoint."""

    root: Path
    limit: int
    endpoint: str | None = None

    @staticmethod
    def from_env(root: str | None = None, limit: str | int | None = None,
                 endpoint: str | None = None) -> RemoteSettings:  # fmt: skip
        """The given values, else AVCACHE_REMOTE_CACHE (default ~/.cache/avcache/remote) and
        AVCACHE_REMOTE_CACHE_LIMIT (default 64G); the endpoint, else botocore's own
        AWS_ENDPOINT_URL."""
        root = root or os.environ.get(ROOT_VARIABLE) or default_root()
        if limit:
            size = parse_size(limit)
        else:
            try:
                size = parse_size(os.environ.get(LIMIT_VARIABLE) or DEFAULT_LIMIT)
            except ValueError as error:
                raise RemoteSettingsError(f"{LIMIT_VARIABLE}: {error}") from None
        return RemoteSettings(Path(root).expanduser(), size, endpoint or None)

    def store(self, url: str) -> ShardStore:
        return ShardStore(Remote(url, self.endpoint), self.root, self.limit)


def folder_for(root: Path, remote: Remote) -> Path:
    """The local folder of one remote cache under `root` (a name from its URL)."""
    return Path(root) / hashlib.sha256(remote.url.encode("utf-8")).hexdigest()[:16]


class Held:
    """A local shard that no process evicts while this is open: a shared flock on it."""

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path, self._descriptor = path, descriptor

    @staticmethod
    def take(path: Path) -> Held | None:
        """The shard at `path` held, or None where it is not there (or was evicted while it
        was being taken)."""
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        fcntl.flock(descriptor, fcntl.LOCK_SH)  # an eviction under way holds it only briefly
        if not _same_file(descriptor, path):  # evicted between the open and the lock
            os.close(descriptor)
            return None
        return Held(path, descriptor)

    def close(self) -> None:
        """Released by closing, never by unlocking: a forked child's copy of the descriptor
        shares the lock, and unlocking it there would release the parent's hold."""
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.fstat(descriptor).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """An exclusive flock on the lock file `path` (made where missing) while inside."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield descriptor
    finally:
        os.close(descriptor)


class StoreFiles:
    """One remote cache's files as this process reaches them: its filesystem, listings,
    and small files downloaded whole."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        # Made in the process that reads, for it alone: a filesystem is neither sent to a
        # worker nor used after a fork (s3fs's event loop is not fork-safe).
        self._fs, self._fs_pid = None, 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None, "_fs_pid": 0}

    @property
    def fs(self):
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs, self._fs_pid = self.remote.filesystem(), os.getpid()
        return self._fs

    def listing(self, folder: str = "") -> dict[str, int]:
        """Every object's bytes under the cache's URL (or its `folder`) by its path in the
        cache (one listing, afresh)."""
        url = self.remote.of(folder) if folder else self.remote.url
        try:
            self.fs.invalidate_cache(url)  # listed afresh, not from an earlier listing
            found = self.fs.find(url, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as error:  # any backend's
            raise RemoteError(f"{url}: cannot be listed ({printable(error)})") from None
        base = self.fs._strip_protocol(self.remote.url).rstrip("/") + "/"
        return {name.removeprefix(base): int(info.get("size") or 0)
                for name, info in found.items() if name.startswith(base)}  # fmt: skip

    def _info(self, relative: str, missing: str) -> dict:
        try:
            return self.fs.info(self.remote.of(relative))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.remote.of(relative)}: {missing}") from None
        except Exception as error:  # any backend's (botocore's are no OSError)
            raise RemoteError(f"{self.remote.of(relative)}: cannot be read "
                              f"({printable(error)})") from None  # fmt: skip

    def _index_info(self) -> dict:
        """The store's index.json's info, refused where it is larger than an index may be."""
        self.fs.invalidate_cache(self.remote.of(schema.INDEX_FILE))
        info = self._info(schema.INDEX_FILE, "no cache index there (an index is written "
                          "only when avcache-preprocess finishes)")  # fmt: skip
        if info["size"] > MAX_JSON_BYTES:
            raise CacheFormatError(f"{self.remote.of(schema.INDEX_FILE)}: {info['size']} bytes, "
                                   f"more than an index may hold: {REBUILD}")  # fmt: skip
        return info

    def _download_small(self, relative: str, local: Path) -> None:
        """The file `relative` downloaded whole to `local` (a partial file, then renamed)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f"{local.name}{PARTIAL}-{os.getpid()}")
        try:
            self.fs.get_file(self.remote.of(relative), str(partial))
            os.replace(partial, local)
        except Exception as error:
            partial.unlink(missing_ok=True)
            raise RemoteError(f"{self.remote.of(relative)}: download failed "
                              f"({printable(error)})") from None  # fmt: skip


class ShardStore(StoreFiles):
    """The local copies of one remote cache's files, in its folder under `root`; `limit`
    bounds the bytes of every shard under `root` (all its caches together)."""

    def __init__(self, remote: Remote, root: Path, limit: int) -> None:
        super().__init__(remote)
        self.root, self.limit = Path(root), int(limit)
        self.folder = folder_for(self.root, remote)

    # ----------------------------------------------------------------------- small files

    def fetch_index(self) -> Path:
        """The local copy of the cache's index.json, downloaded where it is missing or the
        store's object has changed since (its ETag); one process of the node at a time."""
        self.shard_root.mkdir(parents=True, exist_ok=True)
        (self.folder / SOURCE).write_text(self.remote.url + "\n")  # for whoever looks inside
        local = self.folder / schema.INDEX_FILE
        with _locked(self.folder / INDEX_LOCK):
            tag = _tag(self._index_info())
            tag_file = local.with_name(local.name + ETAG)
            if local.is_file() and tag_file.is_file() and tag_file.read_text() == tag:
                return local
            self._download_small(schema.INDEX_FILE, local)
            tag_file.write_text(tag)
        return local

    def fetch_file(self, relative: str) -> Path | None:
        """A small file of the cache (its failures) fetched into the folder each time it is
        asked for; None where the store has none."""
        local = self.folder / relative
        try:
            self._info(relative, "no such file")
        except FileNotFoundError:
            return None
        self._download_small(relative, local)
        return local

    # ----------------------------------------------------------------------------- shards

    @property
    def shard_root(self) -> Path:
        """Where the shards go, each at its path in the cache."""
        return self.folder / SHARDS

    def local(self, relative: str) -> Path:
        return self.shard_root / relative

    def relative(self, path: Path) -> str:
        """The path in the cache of a file under shard_root."""
        return Path(path).relative_to(self.shard_root).as_posix()

    def acquire(self, relative: str, sha256: str, size: int | None = None) -> Held:
        """The shard `relative` (listed with `sha256`) as a local file, held: downloaded and
        checked first where it is not here, and marked used now (least recently used goes
        first). `size`: its bytes in the store, where already known (saves a request)."""
        path = self.local(relative)
        for _ in range(16):  # each pass downloads or holds; only an eviction between repeats
            held = Held.take(path)
            if held is not None:
                # An exact time: the kernel's own stamps are only as fine as its tick (~4 ms),
                # too coarse to order shards used one after the other.
                now = time.time_ns()
                os.utime(path, ns=(now, now))
                return held
            self._download(relative, sha256, path, size)
        raise RemoteError(f"{self.remote.of(relative)}: evicted again each time it was "
                          "downloaded; raise data.remote_cache_limit")  # fmt: skip

    def discard(self, relative: str) -> bool:
        """Drop the local copy of a shard (unless a process holds it), so that the next
        acquire downloads and checks the store's; whether it is gone."""
        with _locked(self.root / SPACE_LOCK):
            return _evict(self.local(relative)) > 0 or not self.local(relative).exists()

    def _download(self, relative: str, sha256: str, path: Path, size: int | None) -> None:
        """Download the shard to its partial file, check it and rename it; one process of
        the node at a time, under the shard's download lock (a file of its own, never
        renamed: a lock on the shard itself would wait for its readers' holds)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + PARTIAL)
        with _locked(path.with_name(path.name + DOWNLOADING)):
            if path.exists():  # finished by the process we waited for
                return
            # Ours alone under the lock: one a killed download left is taken over.
            descriptor = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if size is None:
                    missing = "listed in the index, missing from the store"
                    size = self._info(relative, missing)["size"]
                self._reserve(size, descriptor, partial, relative)
                self._copy_checked(relative, sha256, descriptor, size)
                os.replace(partial, path)
            except BaseException:  # nothing of it is kept, and its reserved bytes are freed
                os.unlink(partial)
                raise
            finally:
                os.close(descriptor)

    def _copy_checked(self, relative: str, sha256: str, descriptor: int, size: int) -> None:
        url, digest, done = self.remote.of(relative), hashlib.sha256(), 0
        try:
            self.fs.invalidate_cache(url)  # the object as it is now, not as first listed
            with self.fs.open(url, "rb", block_size=CHUNK) as source:
                while chunk := source.read(CHUNK):
                    os.pwrite(descriptor, chunk, done)
                    digest.update(chunk)
                    done += len(chunk)
        except FileNotFoundError:
            raise FileNotFoundError(f"{url}: listed in the index, missing from the store: "
                                    f"{REBUILD}") from None  # fmt: skip
        except Exception as error:
            raise RemoteError(f"{url}: download failed after {done} of {size} bytes "
                              f"({printable(error)}); nothing of it was kept",
                              ) from None  # fmt: skip
        if done != size:
            raise RemoteError(f"{url}: {done} bytes downloaded of {size}; nothing of it was kept")
        if digest.hexdigest() != sha256:
            raise CacheFormatError(f"{url}: its sha256 is not the one the index lists (a "
                                   f"damaged or replaced shard): {REBUILD}")  # fmt: skip

    # ------------------------------------------------------------------------------ space

    def _reserve(self, size: int, descriptor: int, partial: Path, relative: str) -> None:
        """Take `size` bytes for the partial file, freeing the least recently used shards
        that nobody holds until they fit within the limit. Holds are brief (a worker closes
        its shards when its pass ends; a killed run's workers exit within seconds), so where
        the held ones leave no room it waits up to ROOM_WAIT seconds for some, then refuses,
        naming what is needed. One process at a time counts and takes."""
        self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + ROOM_WAIT
        while True:
            with _locked(self.root / SPACE_LOCK):
                shards, taken = local_shards(self.root, besides=partial)
                for path in shards:
                    if taken + size <= self.limit:
                        break
                    taken -= _evict(path)
                if taken + size <= self.limit:
                    os.posix_fallocate(descriptor, 0, max(size, 1))  # counted from now on
                    return
            if time.monotonic() > deadline:
                raise RemoteCacheFull(
                    f"{self.remote.of(relative)}: {size} bytes do not fit within "
                    f"data.remote_cache_limit={self.limit} beside the {taken} bytes of shards "
                    f"held or being downloaded on this node: it needs at least {taken + size}"
                )
            time.sleep(ROOM_POLL)


STAGE = "stage"  # in a cache's folder: where avcache-preprocess --out URL writes first


class Publisher(StoreFiles):
    """A cache written to object storage from a local staging folder (avcache-preprocess
    --out URL). The stage mirrors the store's index and receipts, so the preprocessor finds
    what is finished there as in a local folder. A shard is written and committed locally,
    then uploaded, its receipt after it, and its local copy deleted, so the folder holds only
    the shards under way; index.json goes up last and stays the commit point. An object
    appears whole or not at all, so a receipt in the store means its shard is there whole: a
    run after a kill takes those shards as finished without downloading them."""

    def __init__(self, remote: Remote, root: Path) -> None:
        super().__init__(remote)
        self.stage = folder_for(Path(root), remote) / STAGE

    def mirror(self, shard_dir: str) -> set[str]:
        """The store's index.json (none where it has none) and the receipts of the shards it
        holds under `shard_dir`, downloaded into the stage; those shards' paths."""
        index = self.stage / schema.INDEX_FILE
        try:
            self._index_info()
            self._download_small(schema.INDEX_FILE, index)
        except FileNotFoundError:
            index.unlink(missing_ok=True)
        names = self.listing(shard_dir)
        done = set()
        for name in sorted(names):
            shard = name.removesuffix(schema.RECEIPT_SUFFIX) + schema.SHARD_SUFFIX
            if name.endswith(schema.RECEIPT_SUFFIX) and shard in names:
                self._download_small(name, self.stage / name)
                done.add(shard)
        return done

    def put(self, relative: str) -> None:
        """Upload the staging folder's file `relative` to its place in the store."""
        local, url = self.stage / relative, self.remote.of(relative)
        try:
            self.fs.put_file(str(local), url)
        except Exception as error:
            raise RemoteError(f"{url}: upload of {local} failed ({printable(error)}); run the "
                              "same command again to go on") from None  # fmt: skip


class FetchAhead:
    """The shards a pass will open, fetched on a thread of its own up to `ahead` shards
    before the reader, so that a download overlaps the reading of the shards before it.

    `fetches` are the pass's shards in the order it first opens them, each as a call that
    downloads it where needed and holds it (ShardStore.acquire). A shard is held from the
    moment it is fetched until the reader has opened it (`opened`), so no eviction takes it
    in between. A fetch that fails is left for the reader's own, which reports the failure
    by the shard's name where the pass reaches it: fetching ahead changes when a shard is
    downloaded, never what is read or which error is raised.
    """

    def __init__(self, fetches: Sequence[Callable[[], Held]], ahead: int) -> None:
        self._fetches, self._ahead = list(fetches), max(int(ahead), 0)
        self._held: dict[int, Held] = {}
        self._reached = 0  # shards the reader has opened, in pass order
        self._stopped = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="avcache-fetch-ahead",
                                        daemon=True)  # fmt: skip

    def start(self) -> FetchAhead:
        if self._ahead and self._fetches:
            self._thread.start()
        return self

    def opened(self, position: int) -> None:
        """The reader has opened the pass's shard number `position` (and so every one before
        it): their holds are let go, and fetching moves on."""
        with self._changed:
            self._reached = max(self._reached, position + 1)
            for done in [p for p in self._held if p < self._reached]:
                self._held.pop(done).close()
            self._changed.notify_all()

    def close(self) -> None:
        """Stop fetching and let every hold go; a fetch under way finishes on its own and
        lets its shard go."""
        with self._changed:
            self._stopped = True
            while self._held:
                self._held.popitem()[1].close()
            self._changed.notify_all()

    @property
    def held(self) -> list[int]:
        """The positions fetched and not yet opened by the reader."""
        with self._changed:
            return sorted(self._held)

    def _run(self) -> None:
        for position, fetch in enumerate(self._fetches):
            with self._changed:
                while not self._stopped and position >= self._reached + self._ahead:
                    self._changed.wait()
                if self._stopped:
                    return
                if position < self._reached:  # the reader got there first
                    continue
            try:
                held = fetch()
            except Exception:  # the reader's own fetch reports it, by the shard's name
                return
            with self._changed:
                if self._stopped or position < self._reached:
                    held.close()
                else:
                    self._held[position] = held


def local_shards(root: Path, besides: Path | None = None) -> tuple[list[Path], int]:
    """The whole shards downloaded under `root` (every cache's), least recently used first,
    and the bytes they and the downloads under way take (a download's full size is reserved
    when it starts)."""
    used, taken = [], 0
    for path in Path(root).glob(f"*/{SHARDS}/**/*"):
        if path == besides or path.name.endswith(DOWNLOADING):
            continue
        try:
            status = path.stat()  # once: another process may evict it meanwhile
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(status.st_mode):
            continue
        taken += status.st_size
        if not path.name.endswith(PARTIAL):
            used.append((status.st_mtime_ns, path))
    return [path for _, path in sorted(used)], taken


def _evict(path: Path) -> int:
    """Remove the shard at `path` unless a process holds it; the bytes freed (0 if held)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0
        if not _same_file(descriptor, path):
            return 0
        size = os.fstat(descriptor).st_size
        os.unlink(path)
        return size
    finally:
        os.close(descriptor)


def _tag(info: dict) -> str:
    """What changes when the store's object does: its ETag, else its size and time."""
    tag = info.get("ETag") or info.get("etag")
    return (
        str(tag) if tag else f"{info.get('size')}-{info.get('LastModified') or info.get('mtime')}"
    )
