"""A dask.distributed client for joblib's Dask backend: a running scheduler, or a local cluster.

On a cluster every worker needs avcache installed (the same environment) and
must see the data root and the cache folder at the same paths: shards are
written by the workers straight into the shared cache folder, and only their
receipts travel back to the process that commits the index.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger("avcache.preprocess")


def _distributed():
    try:
        import dask.distributed
    except ImportError:
        raise ValueError(
            "--backend dask needs dask.distributed: pip install 'dask[distributed]' "
            "(or install avcache with its [cluster] extra)"
        ) from None
    return dask.distributed


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[object]:
    """A client of the scheduler at `scheduler`, or of a local cluster of `workers`
    single-threaded processes (closed on exit) when no address is given."""
    distributed = _distributed()
    # Its connection chatter at INFO would bury the progress bar and the summary.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler:
        try:
            client = distributed.Client(scheduler)  # waits distributed.comm.timeouts.connect
        except OSError as error:
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
        with client:
            log.info("dask: %d workers at %s", len(client.scheduler_info()["workers"]), scheduler)
            yield client
        return
    # One thread per worker process, as with loky: a shard task sets process-wide thread
    # counts (OpenCV, torch), and each worker already keeps a core busy.
    cluster = distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as client:
        log.info("dask: a local cluster of %d worker processes", workers)
        yield client
