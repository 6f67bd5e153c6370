"""Where many independent tasks run: a Dask cluster, local or existing (cli-contract.md, ``--workers`` /
``--scheduler``).

The flows never import Dask: ``robustness`` and ``cohort`` take a ``Runner`` (anything with ``map(fn, items)``
returning results in the order of ``items``) and the commands open one here:

    with open_cluster(workers=2) as runner:            # a LocalCluster of 2 worker processes on 127.0.0.1
        results = runner.map(one_study, studies, progress=lambda done, total: ...)
    with open_cluster(scheduler="tcp://127.0.0.1:8786") as runner:   # an existing cluster
        ...

``SerialRunner`` runs in this process (tests of the numbers, tiny jobs). Tasks must be module-level functions
and their arguments picklable; the numbers never depend on the number of workers because each task carries its
own random seed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from typing import Any

from navigator.core.runner import Progress, Runner, SerialRunner  # noqa: F401  (the runner API, here too)
from navigator.errors import InputError

class ClusterError(InputError):
    """No Dask cluster could be started or reached (a bad ``--workers`` or ``--scheduler``). Exit code 2."""


class DaskRunner:
    """Tasks on a ``distributed.Client``; results in the order of the items, progress as tasks complete."""

    def __init__(self, client):
        self.client = client

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def map(self, fn, items, progress=None, on_error=None) -> list:
        """``on_error(item, exc)``: the result of a task that raised or whose worker died (killed for memory,
        lost with its machine); without it such a task stops the map."""
        from distributed import as_completed

        items = list(items)
        if not items:
            return []
        futures = self.client.map(fn, items, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        results: list = [None] * len(items)
        for done, future in enumerate(as_completed(futures), start=1):
            i = index[future.key]
            try:
                results[i] = future.result()
            except Exception as exc:  # KilledWorker, CommClosedError, the task's own exception
                if on_error is None:
                    raise
                results[i] = on_error(items[i], exc)
            if progress:
                progress(done, len(items))
        return results


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def open_cluster(workers: int | None = None, scheduler: str | None = None,
                 connect_timeout_s: float = 10.0) -> Iterator[DaskRunner]:
    """A runner on a local Dask cluster of ``workers`` processes (default one per core), or on the existing
    cluster whose scheduler listens at ``scheduler`` (``tcp://host:8786``)."""
    if workers is not None and scheduler is not None:
        raise ClusterError("--workers and --scheduler: give one of them; --workers starts a local cluster, "
                           "--scheduler uses an existing one")
    from distributed import Client, LocalCluster

    _quiet_dask_logs()
    if scheduler is not None:
        _check_address(scheduler)
        _probe(scheduler, connect_timeout_s)
        try:
            client = Client(scheduler, timeout=f"{connect_timeout_s}s")
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"--scheduler {scheduler}: no Dask scheduler answered within {connect_timeout_s:g} s "
                               f"({exc}); start one with `dask scheduler` and `dask worker {scheduler}`, "
                               "or leave out --scheduler to run on a local cluster") from None
        with client:
            if not client.scheduler_info().get("workers"):
                try:
                    client.wait_for_workers(1, timeout=connect_timeout_s)
                except (OSError, TimeoutError):
                    raise ClusterError(f"--scheduler {scheduler}: the scheduler has no workers; start one with "
                                       f"`dask worker {scheduler}`") from None
            yield DaskRunner(client)
        return
    n = default_workers() if workers is None else workers
    if not isinstance(n, int) or n < 1 or n > 512:
        raise ClusterError(f"--workers {workers}: give a whole number of worker processes from 1 to 512")
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.wait_for_workers(n, timeout=120)
        yield DaskRunner(client)


def _check_address(address: str) -> None:
    if not isinstance(address, str) or "://" not in address or not address.rsplit(":", 1)[-1].isdigit():
        raise ClusterError(f"--scheduler {address!r}: give the scheduler's address as tcp://HOST:PORT "
                           "(e.g. tcp://127.0.0.1:8786)")


def _probe(address: str, timeout_s: float) -> None:
    """A Dask scheduler sends its handshake as soon as a connection opens; distributed's ``connect`` waits for it
    with no time limit, so a port that accepts and never answers would hang the client for good. Plain TCP
    only (a TLS scheduler waits for the client's hello)."""
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return
    host, _, port = rest.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            if not s.recv(1):
                raise OSError("the connection was closed before a handshake")
    except OSError as exc:  # refused, unreachable, or silent (socket timeout)
        why = str(exc) or "timed out"
        raise ClusterError(f"--scheduler {address}: no Dask scheduler answered within {timeout_s:g} s ({why}); start "
                           f"one with `dask scheduler` and `dask worker {address}`, or leave out --scheduler to run "
                           "on a local cluster") from None


def _quiet_dask_logs() -> None:
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny",
                 "distributed.core", "distributed.comm"):
        logging.getLogger(name).setLevel(logging.ERROR)


def chunks(items: Iterable[Any], size: int) -> list[list[Any]]:
    """Items in consecutive groups of ``size`` (batching many small samples into fewer tasks)."""
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]
