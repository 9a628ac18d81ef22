"""``dada scheduler`` and ``dada worker``: the Dask processes of the cluster, and how a
``dada stxm`` reaches them.

Both run in the foreground, log to stderr (journald keeps it) and stop cleanly on SIGTERM or
SIGINT, so a systemd unit of ``Type=exec`` with ``Restart=on-failure`` runs them. The scheduler
serves the Dask dashboard when bokeh is installed (``--dashboard-port``, 0 for none). A worker
imports the analysis code before it registers, so tasks only pay for their plan (open files,
masks), once per scan and worker. A worker whose scheduler goes away (restarted, node
rebooted) exits with status 1 so that systemd restarts it and it registers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from workers.jobs import Backend, DaskBackend, LocalBackend

log = logging.getLogger("dada")

#: Jobs of fewer frames run in this process when no scheduler is named (a local cluster of
#: processes costs seconds to start and only pays off on many cores).
LOCAL_CLUSTER_MIN_FRAMES = 20_000


#: Dask settings of dada's processes, unless the environment sets them (``DASK_...`` variables).
#: Tasks go to workers at once instead of one scheduler round trip each (results are small, so
#: queuing buys no memory; work stealing balances), and workers do not sample their task threads
#: every 10 ms for the dashboard's profile page: that costs 3x on small tasks when cores are
#: contended (measured on 2x3-point scan tasks on a loaded 2-core machine).
DASK_DEFAULTS = {
    "distributed.scheduler.worker-saturation": float("inf"),
    "distributed.worker.profile.enabled": False,
}


def dask_defaults() -> None:
    import dask

    for key, value in DASK_DEFAULTS.items():
        env = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
        if env not in os.environ:
            dask.config.set({key: value})


def _logging() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


async def _serve(server: Any, what: str) -> bool:
    """Run ``server`` until it finishes; True when it stopped because of SIGTERM/SIGINT."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if not stopping.is_set():
            log.info("%s: stopping on a signal", what)
            stopping.set()
            asyncio.ensure_future(server.close())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    await server.finished()
    return stopping.is_set()


def scheduler_main(host: str, port: int, dashboard_port: int) -> int:
    """``dada scheduler``: a Dask scheduler in the foreground."""
    from distributed import Scheduler

    _logging()
    dask_defaults()
    dashboard = dashboard_port > 0 and importlib.util.find_spec("bokeh") is not None
    if dashboard_port > 0 and not dashboard:
        log.warning("dada scheduler: no dashboard (bokeh is not installed)")

    async def main() -> None:
        async with Scheduler(
            host=host or None,
            port=port,
            dashboard=dashboard,
            dashboard_address=f"{host}:{dashboard_port}" if dashboard else None,
        ) as s:
            log.info("dada scheduler: listening at %s", s.address)
            await _serve(s, "dada scheduler")

    asyncio.run(main())
    return 0


def worker_main(scheduler: str, nthreads: int, name: str | None, host: str) -> int:
    """``dada worker``: a Dask worker with the analysis code loaded, in the foreground."""
    from distributed import Worker

    import workers.algorithms
    import workers.engine
    import workers.formats
    import workers.jobs  # noqa: F401  (the task functions)

    _logging()
    dask_defaults()

    async def main() -> bool:
        async with Worker(
            scheduler,
            nthreads=nthreads,
            name=name,
            host=host or None,
            dashboard=False,
            memory_limit=0,  # frames are streamed, results are small: no spilling to disk
        ) as w:
            log.info("dada worker %s: %d threads, scheduler %s", w.address, nthreads, scheduler)
            return await _serve(w, "dada worker")

    by_signal = asyncio.run(main())
    if not by_signal:
        log.error("dada worker: the scheduler at %s went away; exiting", scheduler)
        return 1
    return 0


@contextlib.contextmanager
def backend_for(
    scheduler: str | None, workers: int | None, threads: int, frames: int
) -> Iterator[Backend]:
    """The backend of a ``dada stxm``: the cluster at ``scheduler``; else a local cluster of
    ``workers`` processes (``threads`` split among them); else, with ``workers`` None and a
    small job, or ``workers=0``, this process."""
    if scheduler:
        from distributed import Client

        try:
            client = Client(scheduler, timeout=10, direct_to_workers=True)
        except OSError as e:
            raise OSError(f"cannot reach the scheduler at {scheduler}: {e}") from None
        try:
            yield DaskBackend(client)
        finally:
            client.close()
        return
    ncpu = os.cpu_count() or 1
    if workers is None:
        workers = 0 if frames < LOCAL_CLUSTER_MIN_FRAMES or ncpu <= 2 else max(2, ncpu // 4)
    if workers == 0:
        yield LocalBackend(threads)
        return
    from distributed import Client, LocalCluster

    dask_defaults()
    per = max(1, threads // workers)
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=per,
            processes=True,
            dashboard_address=None,
            memory_limit=0,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster, direct_to_workers=True) as client,
    ):
        backend = DaskBackend(client)
        backend.where = f"a local cluster of {workers} processes x {per} threads"
        yield backend
