"""Running many independent tasks: the runner interface the flows take (``map(fn, items, progress, on_error)``
in the items' order) and the one that runs them here, one after another. ``navigator.cluster`` opens Dask
runners with the same interface; the flows never import Dask."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

Progress = Callable[[int, int], None]


class Runner(Protocol):
    workers: int

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], progress: Progress | None = None,
            on_error: Callable[[Any, BaseException], Any] | None = None) -> list: ...


class SerialRunner:
    """Runs every task here, one after another."""

    workers = 1

    def map(self, fn, items, progress=None, on_error=None) -> list:
        items = list(items)
        out = []
        for i, item in enumerate(items):
            try:
                out.append(fn(item))
            except Exception as exc:
                if on_error is None:
                    raise
                out.append(on_error(item, exc))
            if progress:
                progress(i + 1, len(items))
        return out
