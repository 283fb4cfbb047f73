"""Run a planned sweep: skip completed runs, execute the rest, rebuild the index.

Executors (``--executor``):

- ``local``: a ``ProcessPoolExecutor`` with ``jobs`` processes (``jobs=1`` runs in this
  process);
- ``dask-local``: a Dask ``LocalCluster`` of ``jobs`` single-threaded worker processes;
- ``dask://HOST:PORT``: an existing Dask scheduler; its workers need overlaysim
  installed and must see the output folder at the same path (a shared filesystem).

Emulation runs one at a time in this process (one Mininet per machine).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from overlaysim.sweep.grid import SweepError
from overlaysim.sweep.index import write_index
from overlaysim.sweep.plan import RunTask, SweepPlan, is_complete, write_point_files

LOCAL = "local"
DASK_LOCAL = "dask-local"
DASK_SCHEME = "dask://"


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What one run ended with: ``complete``, ``interrupted`` or ``failed``.

    ``worker`` names the process that ran it (``host:pid``) and ``wall_s`` how long it
    took there; both are empty when the run never reached a worker (a lost task).
    """

    point_id: str
    seed: int
    status: str
    error: str | None = None
    worker: str = ""
    wall_s: float | None = None


@dataclass(frozen=True, slots=True)
class SweepResult:
    """Counts of a sweep invocation and where its index is."""

    ran: tuple[RunOutcome, ...]
    skipped: int
    index: Path

    @property
    def failed(self) -> int:
        return sum(1 for o in self.ran if o.status != "complete")

    @property
    def done(self) -> int:
        return sum(1 for o in self.ran if o.status == "complete")

    @property
    def ok(self) -> bool:
        """True when every run of the sweep is now complete."""
        return self.failed == 0


def run_task(task: RunTask) -> RunOutcome:
    """Run one task in the current process; never raises for a failed run."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    t0 = time.perf_counter()
    try:
        if task.backend == "emu":
            from overlaysim.emu.runner import run_emulation

            status = run_emulation(task.scenario, task.out, seed=task.seed, progress=False)
        else:
            from overlaysim.sim.runner import run_simulation

            status = run_simulation(task.scenario, task.out, seed=task.seed, progress=False)
        if task.plots and status != "failed":
            from overlaysim.metrics.results import load_run
            from overlaysim.report.plots import write_plots

            write_plots(load_run(task.out), Path(task.out) / "plots")
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        return RunOutcome(
            task.point_id, task.seed, "failed", error, worker, time.perf_counter() - t0
        )
    return RunOutcome(task.point_id, task.seed, status, None, worker, time.perf_counter() - t0)


def check_executor(executor: str, backend: str, jobs: int | None) -> None:
    """Raise ``SweepError`` for an unknown executor or parallel emulation."""
    if executor not in (LOCAL, DASK_LOCAL) and not executor.startswith(DASK_SCHEME):
        raise SweepError(f"--executor {executor!r}: expected local, dask-local or dask://HOST:PORT")
    if executor.startswith(DASK_SCHEME) and not executor[len(DASK_SCHEME) :]:
        raise SweepError(f"--executor {executor!r}: expected dask://HOST:PORT")
    if jobs is not None and jobs < 1:
        raise SweepError(f"--jobs {jobs}: expected at least 1")
    if backend == "emu":
        if executor != LOCAL:
            raise SweepError(
                "emulation sweeps run one point at a time on this machine (one Mininet "
                f"per machine): --executor {executor} is only for --backend sim"
            )
        if jobs is not None and jobs > 1:
            raise SweepError(
                "emulation sweeps run one point at a time on this machine (one Mininet "
                f"per machine): use --jobs 1, not --jobs {jobs}"
            )


Runner = Callable[[RunTask], RunOutcome]


@contextlib.contextmanager
def _inline(tasks: Sequence[RunTask], fn: Runner) -> Iterator[Iterator[RunOutcome]]:
    yield (fn(t) for t in tasks)


@contextlib.contextmanager
def _pool(tasks: Sequence[RunTask], fn: Runner, jobs: int) -> Iterator[Iterator[RunOutcome]]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(max_workers=jobs)
    futures = {pool.submit(fn, t): t for t in tasks}

    def results() -> Iterator[RunOutcome]:
        for fut in as_completed(futures):
            t = futures[fut]
            try:
                yield fut.result()
            except Exception as exc:  # the worker process died (e.g. out of memory)
                yield RunOutcome(t.point_id, t.seed, "failed", f"{type(exc).__name__}: {exc}")

    try:
        yield results()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _dask(
    tasks: Sequence[RunTask], fn: Runner, address: str | None, jobs: int
) -> Iterator[Iterator[RunOutcome]]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SweepError(
            "the Dask executors need dask[distributed]: pip install 'overlaysim[sweep]'"
        ) from None
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_cancel_after_interrupt())
        if address is None:
            with _workers_ignore_sigint():
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=jobs,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                        # CRITICAL, not ERROR: a worker whose heartbeat meets the
                        # scheduler already gone (Ctrl-C closes both) logs that with a
                        # traceback at ERROR. A run that fails still says why: its
                        # exception comes back with its result.
                        silence_logs=logging.CRITICAL,
                    )
                )
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(address, timeout=10))
            except OSError as exc:
                raise SweepError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        futures = client.map(fn, list(tasks), pure=False)
        by_key = {f.key: t for f, t in zip(futures, tasks, strict=True)}

        def results() -> Iterator[RunOutcome]:
            # Results are fetched on Dask's own event-loop thread: this thread only waits
            # on a condition. A Ctrl-C that lands inside a blocking `Future.result()` makes
            # distributed (2026.8) log a NameError traceback from its own cancel callback.
            done = as_completed(futures, with_results=True, raise_errors=False)
            for fut, result in done:
                t = by_key[fut.key]
                if fut.status == "finished":
                    yield result
                    continue
                exc = result[1] if isinstance(result, tuple) else result
                # the worker died, the task raised or was cancelled
                yield RunOutcome(t.point_id, t.seed, "failed", f"{type(exc).__name__}: {exc}")

        try:
            yield results()
        finally:
            client.cancel(futures)


class _CancelAfterInterrupt(logging.Filter):
    """Drop the one traceback distributed's client logs after a Ctrl-C.

    When Ctrl-C interrupts any blocking client call (submitting, cancelling, closing),
    distributed schedules a cancel callback that reads a variable it may not have set
    yet; the event loop then logs a NameError from ``distributed/utils.py``. Nothing
    is lost (the sweep is stopping), so only that record is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, NameError) or exc.__traceback__ is None:
            return True
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code
        return not (code.co_name == "cancel" and "distributed" in code.co_filename)


@contextlib.contextmanager
def _quiet_cancel_after_interrupt() -> Iterator[None]:
    log = logging.getLogger("tornado.application")
    quiet = _CancelAfterInterrupt()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (they keep that across exec).

    Ctrl-C in a terminal reaches every process of the foreground group: the workers
    would each die with a KeyboardInterrupt traceback on stderr. Only the sweep's own
    process should see it; it then closes the cluster, which stops the workers. A
    Ctrl-C during the second or so the workers take to start is lost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _executor(
    tasks: Sequence[RunTask], executor: str, jobs: int, backend: str, fn: Runner
) -> contextlib.AbstractContextManager[Iterator[RunOutcome]]:
    if backend == "emu" or (executor == LOCAL and jobs == 1) or not tasks:
        return _inline(tasks, fn)
    if executor == LOCAL:
        return _pool(tasks, fn, jobs)
    if executor == DASK_LOCAL:
        return _dask(tasks, fn, None, jobs)
    return _dask(tasks, fn, "tcp://" + executor[len(DASK_SCHEME) :], jobs)


def run_sweep(
    plan: SweepPlan,
    *,
    jobs: int | None = None,
    executor: str = LOCAL,
    progress: bool = True,
    runner: Runner = run_task,
) -> SweepResult:
    """Run every task of ``plan`` whose folder is not complete, then rebuild the index.

    A run is skipped when its ``manifest.json`` says ``complete``; any other folder is
    run again (overwritten). ``jobs`` defaults to the CPU count (1 for emulation). The
    index is rebuilt even when the sweep is interrupted, so it always matches the disk.
    A run that reports ``interrupted`` while running in this process (Ctrl-C) stops the
    sweep with ``KeyboardInterrupt``.
    ``runner`` replaces :func:`run_task` (it must be picklable for process executors).
    """
    check_executor(executor, plan.backend, jobs)
    if jobs is None:
        jobs = 1 if plan.backend == "emu" else (os.cpu_count() or 1)
    write_point_files(plan)
    todo = [t for t in plan.tasks if not is_complete(t.out)]
    skipped = len(plan.tasks) - len(todo)
    outcomes: list[RunOutcome] = []
    expected = [(p.mapping, p.id, s) for p in plan.points for s in plan.seeds]
    sequential = plan.backend == "emu" or (executor == LOCAL and jobs == 1)
    try:
        with _Progress(len(plan.tasks), skipped, progress) as bar:
            with _executor(todo, executor, jobs, plan.backend, runner) as results:
                for outcome in results:
                    outcomes.append(outcome)
                    bar.add(outcome)
                    if outcome.status == "interrupted" and sequential:
                        # Ctrl-C landed inside the run, which saved its state: stop here
                        raise KeyboardInterrupt
    finally:
        index = write_index(plan.out, expected)
    return SweepResult(ran=tuple(outcomes), skipped=skipped, index=index)


class _Progress:
    """A rich progress bar with done/skipped/failed counts, and one line per finished
    run above it (or nothing when off)."""

    def __init__(self, total: int, skipped: int, enabled: bool) -> None:
        self.total = total
        self.skipped = skipped
        self.done = 0
        self.failed = 0
        self.enabled = enabled
        self._bar = None
        self._task = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]sweep"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self._text(), total=self.total, completed=self.skipped)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def _text(self) -> str:
        return f"done {self.done}  skipped {self.skipped}  failed {self.failed}"

    def add(self, outcome: RunOutcome) -> None:
        if outcome.status == "complete":
            self.done += 1
        else:
            self.failed += 1
        if self._bar is not None:
            self._bar.console.print(
                self.line(outcome), highlight=False, markup=False, soft_wrap=True
            )
            self._bar.update(self._task, advance=1, description=self._text())

    def line(self, outcome: RunOutcome) -> str:
        """One finished run: how far the sweep is, which run, how it ended, where."""
        n = self.skipped + self.done + self.failed
        text = f"[{n}/{self.total}] {outcome.point_id}/seed-{outcome.seed}: {outcome.status}"
        if outcome.wall_s is not None:
            text += f" in {outcome.wall_s:.1f} s"
        if outcome.worker:
            text += f" on {outcome.worker}"
        if outcome.error:
            text += f" ({outcome.error})"
        return text
