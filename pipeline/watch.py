"""Waiting on Dask futures without hanging when the cluster has lost every worker: a run whose
workers are all gone (killed, out of memory, a remote machine down) says so within a minute."""

from __future__ import annotations

import time

POLL_S = 5.0
WORKERS_GONE_S = 45.0  # with no worker connected this long, the run stops with a message


class WorkersGone(ConnectionError):
    pass


class _Watch:
    def __init__(self, client, gone_s: float | None = None):
        self.client, self.since = client, None
        self.gone_s = WORKERS_GONE_S if gone_s is None else gone_s

    def check(self) -> None:
        try:
            n = len(self.client.scheduler_info()["workers"])
        except (OSError, TimeoutError) as e:
            raise WorkersGone(f"lost the Dask scheduler: {e}") from e
        if n:
            self.since = None
            return
        now = time.monotonic()
        self.since = self.since or now
        if now - self.since >= self.gone_s:
            raise WorkersGone(
                f"the Dask cluster has had no worker for {now - self.since:.0f} s, so the run "
                "cannot go on: a worker may have been killed (out of memory?) or a remote machine "
                "lost. Start workers (`dask worker ADDRESS`) or rerun without --scheduler; the "
                "same command resumes what is done."
            )


def as_completed_watched(client, futures, poll_s: float | None = None, gone_s: float | None = None):
    """Yield futures as they finish; raise WorkersGone when no worker has been connected for
    ``gone_s`` seconds while some are still pending."""
    from distributed import wait

    watch = _Watch(client, gone_s)
    poll_s = POLL_S if poll_s is None else poll_s
    pending = set(futures)
    while pending:
        try:
            done, pending = wait(pending, timeout=poll_s, return_when="FIRST_COMPLETED")
        except TimeoutError:
            watch.check()
            continue
        watch.check()
        yield from done


def gather_watched(client, futures, **kw) -> list:
    """client.gather(futures) in order, with the same watch."""
    for _ in as_completed_watched(client, futures, **kw):
        pass
    return client.gather(list(futures))


def progress(futures, client, desc: str, show: bool, unit: str = "task"):
    """``as_completed_watched`` with a tqdm bar on stderr when ``show`` (every long stage shows
    how far it is)."""
    bar = None
    if show and futures:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(futures), desc=desc, unit=unit, file=sys.stderr)
    try:
        for fut in as_completed_watched(client, futures):
            if bar:
                bar.update(1)
            yield fut
    finally:
        if bar:
            bar.close()
