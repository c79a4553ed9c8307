"""Running a list of independent tasks locally or on a cluster, with results handled in the driver.

:func:`run_tasks` runs ``fn(task, threads)`` for every task and calls ``on_result(task, result or
exception, seconds)`` in the calling process (the driver) as each one ends, so the driver alone
writes the results (one SQLite writer, no locking across machines).

- ``scheduler=None``: in this process (``workers <= 1``) or in ``workers`` spawned local processes;
- ``scheduler="local"``: a Dask ``LocalCluster`` on 127.0.0.1 made for the call (``workers`` worker
  processes, each running one task at a time with ``threads`` threads);
- ``scheduler="tcp://host:port"``: an existing Dask distributed scheduler. Start its workers with one
  task slot each, e.g. ``dask worker tcp://host:port --nworkers 8 --nthreads 1``; ``threads`` is what
  each task is told to use (torch threads), ``workers`` is ignored (the cluster decides).

Failures. A task that raises is reported to ``on_result`` with its exception and never retried (a
deterministic failure would fail again). A task whose worker process dies (killed, out of memory,
a machine lost) is rescheduled by Dask on another worker, up to :data:`ALLOWED_FAILURES` times, after
which it is reported as ``KilledWorker``; for a remote scheduler that limit is the scheduler's own
``distributed.scheduler.allowed-failures`` setting. In the local process pool a dead worker breaks
the pool: its tasks are reported as failed and the remaining tasks run in a fresh pool.

Why Dask distributed rather than Ray: it is pure Python and pip-installable with no separate
runtime or object store, a ``LocalCluster`` on loopback starts in seconds (so the cluster path is
tested on one machine), its futures API maps one to one onto "submit tasks, handle each as it
completes", and it already reschedules the tasks of lost workers. Ray brings a much heavier
runtime for scheduling features these sweeps do not need.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from latentdit.progress import progress_bar

ALLOWED_FAILURES = 2  # worker deaths a task may cause before it is reported as failed (Dask paths)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

Task = dict
OnResult = Callable[[dict, object, float], None]


def _worker_init(threads: int) -> None:
    # set before torch is imported in the worker; the task itself may also call torch.set_num_threads
    for var in THREAD_VARS:
        os.environ[var] = str(max(1, threads))


def _timed(fn, task: dict, threads: int) -> tuple[bool, object, float]:
    """Run one task where it is scheduled: (ok, result or exception, seconds). An exception is
    returned, not raised, so that Dask never retries it; one that cannot be pickled is replaced by a
    RuntimeError carrying its type and message."""
    t = time.time()
    try:
        return True, fn(task, threads), time.time() - t
    except Exception as e:  # noqa: BLE001 - reported to the driver
        try:
            pickle.dumps(e)
        except Exception:  # noqa: BLE001
            e = RuntimeError(f"{type(e).__name__}: {e}")
        return False, e, time.time() - t


def _bar(total: int, progress: bool):
    return progress_bar(total=total, desc="tasks", unit="task", enabled=progress)


def run_tasks(fn: Callable[[dict, int], dict], tasks: list[dict], *, on_result: OnResult, scheduler: str | None = None,
              workers: int = 1, threads: int = 1, progress: bool = True,
              on_start: Callable[[dict], None] | None = None) -> dict:
    """Run ``fn(task, threads)`` for every task; ``on_result(task, result_or_exception, seconds)`` is
    called in this process as each ends (``on_start(task)`` too, when the task is handed out).

    ``fn`` must be a top-level (picklable) function. Returns counts ``{"ran", "failed"}``.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"run_tasks: workers={workers!r} must be a positive integer")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"run_tasks: threads={threads!r} must be a positive integer")
    if scheduler is not None and scheduler != "local" and not str(scheduler).startswith(("tcp://", "tls://")):
        raise ValueError(f"run_tasks: scheduler={scheduler!r} must be None, 'local' or a 'tcp://host:port' address")
    counts = {"ran": 0, "failed": 0}
    tasks = list(tasks)
    bar = _bar(len(tasks), progress)

    def finish(task: dict, ok: bool, value, secs: float) -> None:
        counts["ran" if ok else "failed"] += 1
        on_result(task, value, secs)
        bar.update(1)
        bar.set_postfix(ran=counts["ran"], failed=counts["failed"])

    try:
        if scheduler is not None:
            _run_dask(fn, tasks, finish, on_start, scheduler, workers, threads)
        elif workers <= 1:
            for task in tasks:
                if on_start:
                    on_start(task)
                finish(task, *_timed(fn, task, threads))
        else:
            _run_pool(fn, tasks, finish, on_start, workers, threads)
    finally:
        bar.close()
    return counts


SIGNAL_POLL_SECONDS = 0.5  # the longest the pool loop sleeps before Python runs a pending signal handler


def _run_pool(fn, tasks, finish, on_start, workers: int, threads: int) -> None:
    """Spawned local processes; a broken pool (a worker died) fails its in-flight tasks and restarts."""
    queue = list(tasks)
    ctx = mp.get_context("spawn")
    before = set(mp.active_children())
    while queue:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(threads,)) as ex:
            futs: dict = {}
            broken = False
            try:
                while (queue and not broken) or futs:
                    while queue and not broken and len(futs) < workers:
                        task = queue.pop(0)
                        if on_start:
                            on_start(task)
                        futs[ex.submit(_timed, fn, task, threads)] = (task, time.time())
                    # a timed wait: a SIGINT the kernel hands to one of the pool's helper threads only
                    # sets Python's flag, and an untimed wait would keep the main thread asleep (and
                    # Ctrl-C unanswered) until a task ends
                    done, _ = wait(list(futs), timeout=SIGNAL_POLL_SECONDS, return_when=FIRST_COMPLETED)
                    for f in done:
                        task, t0 = futs.pop(f)
                        exc = f.exception()
                        if exc is None:
                            finish(task, *f.result())
                        else:
                            broken = broken or isinstance(exc, BrokenProcessPool)
                            finish(task, False, exc, time.time() - t0)
            except BaseException:  # Ctrl-C or a failed finish: stop now, not after the tasks in flight
                procs = set((getattr(ex, "_processes", None) or {}).values())  # public only from Python 3.14
                # and a worker interrupted between its start and its registration in the pool, which
                # interpreter exit would otherwise wait for (it joins every multiprocessing child)
                procs |= set(mp.active_children()) - before
                ex.shutdown(wait=False, cancel_futures=True)
                for p in procs:
                    p.terminate()
                raise


def _run_dask(fn, tasks, finish, on_start, scheduler: str, workers: int, threads: int) -> None:
    import dask
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        if scheduler == "local":
            # one task slot per worker process (the "slot" resource), each task with `threads` threads
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                                   dashboard_address=None, resources={"slot": 1},
                                   env={v: str(threads) for v in THREAD_VARS})
            client = Client(cluster)
            extra = {"resources": {"slot": 1}}
        else:
            client = Client(scheduler)
            extra = {}
        try:
            futs = {}
            for i, task in enumerate(tasks):
                if on_start:
                    on_start(task)
                f = client.submit(_timed, fn, task, threads, pure=False, retries=0, key=f"task-{i}-{os.getpid()}",
                                  **extra)
                futs[f.key] = (f, task, time.time())
            try:
                for f in as_completed([v[0] for v in futs.values()]):
                    _, task, t0 = futs[f.key]
                    if f.status == "finished":
                        finish(task, *f.result())
                    else:  # the task's workers kept dying (KilledWorker) or it was cancelled
                        finish(task, False, f.exception(), time.time() - t0)
                    f.release()
            except BaseException:
                client.cancel([v[0] for v in futs.values()])
                raise
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
