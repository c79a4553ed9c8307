"""run_tasks: local processes and Dask distributed on 127.0.0.1 (results handled in the driver, a
killed worker's task rescheduled, a raising task reported once)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import pytest

from latentdit.experiments.rates.scheduler import ALLOWED_FAILURES, run_tasks

# the Dask workers do not have tests/ on their path: ship this module's functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(task: dict, threads: int) -> dict:
    return {"y": task["x"] ** 2, "pid": os.getpid(), "threads": threads, "omp": os.environ.get("OMP_NUM_THREADS")}


def flaky(task: dict, threads: int) -> dict:
    """Kills its own worker process on the first attempt (marker file absent), succeeds after."""
    d = Path(task["dir"])
    attempts = len(list(d.glob(f"{task['x']}.attempt*")))
    (d / f"{task['x']}.attempt{attempts}").touch()
    if task.get("die") and attempts == 0:
        os._exit(1)
    if task.get("raise"):
        raise ValueError(f"bad task {task['x']}")
    return {"y": task["x"] ** 2, "attempts": attempts + 1}


def _collect():
    seen = []

    def on_result(task, res, secs):
        seen.append((task, res, secs, os.getpid()))

    return seen, on_result


@pytest.mark.slow
def test_in_process_and_local_pool(tmp_path):
    for workers in (1, 2):
        seen, on_result = _collect()
        tasks = [{"x": i} for i in range(5)] + [{"x": 9, "raise": True, "dir": str(tmp_path)}]
        counts = run_tasks(_square_or_flaky, tasks, on_result=on_result, workers=workers, threads=2, progress=False)
        assert counts == {"ran": 5, "failed": 1}
        got = {t["x"]: r for t, r, _, _ in seen}
        assert {x: got[x]["y"] for x in range(5)} == {x: x * x for x in range(5)}
        assert isinstance(got[9], ValueError) and "bad task 9" in str(got[9])
        assert all(pid == os.getpid() for *_, pid in seen)  # on_result runs in the driver
        if workers == 2:
            assert all(got[x]["pid"] != os.getpid() and got[x]["omp"] == "2" for x in range(5))


def _square_or_flaky(task, threads):
    return flaky(task, threads) if "dir" in task else square(task, threads)


@pytest.fixture(scope="module")
def cluster():
    """A Dask scheduler and two worker processes on loopback, used through its tcp:// address."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None)
    yield c
    c.close()


@pytest.mark.slow
def test_local_cluster_runs_every_task_and_reports_in_the_driver():
    seen, on_result = _collect()
    started = []
    # threads=2: each worker process gets OMP_NUM_THREADS=2 (this test process has 1) and fn gets 2
    counts = run_tasks(square, [{"x": i} for i in range(6)], on_result=on_result, scheduler="local", workers=2,
                       threads=2, progress=False, on_start=started.append)
    assert counts == {"ran": 6, "failed": 0} and len(started) == 6
    assert sorted(r["y"] for _, r, _, _ in seen) == [i * i for i in range(6)]
    assert all(pid == os.getpid() for *_, pid in seen)
    assert all(r["pid"] != os.getpid() and r["omp"] == "2" and r["threads"] == 2 and secs >= 0
               for _, r, secs, _ in seen)


@pytest.mark.slow
def test_killed_worker_is_rescheduled_and_raising_task_reported_once(cluster, tmp_path):
    assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    seen, on_result = _collect()
    tasks = [{"x": 1, "dir": str(tmp_path), "die": True}, {"x": 2, "dir": str(tmp_path)},
             {"x": 3, "dir": str(tmp_path), "raise": True}]
    counts = run_tasks(flaky, tasks, on_result=on_result, scheduler=cluster.scheduler_address, threads=1,
                       progress=False)
    assert counts == {"ran": 2, "failed": 1}
    got = {t["x"]: r for t, r, _, _ in seen}
    assert got[1] == {"y": 1, "attempts": 2}  # its first worker died; the retry completed it
    assert got[2] == {"y": 4, "attempts": 1}
    assert isinstance(got[3], ValueError) and "bad task 3" in str(got[3])
    assert len(list(tmp_path.glob("3.attempt*"))) == 1  # a raising task is not retried


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers="):
        run_tasks(square, [], on_result=print, workers=0)
    with pytest.raises(ValueError, match="scheduler="):
        run_tasks(square, [], on_result=print, scheduler="somewhere:8786")


def always_dies(task: dict, threads: int) -> dict:
    (Path(task["dir"]) / f"death{len(list(Path(task['dir']).glob('death*')))}").touch()
    os._exit(1)


@pytest.mark.slow
def test_a_task_that_always_kills_its_worker_is_reported_not_retried_forever(cluster, tmp_path):
    seen, on_result = _collect()
    counts = run_tasks(always_dies, [{"dir": str(tmp_path)}], on_result=on_result,
                       scheduler=cluster.scheduler_address, progress=False)
    assert counts == {"ran": 0, "failed": 1}
    from distributed.scheduler import KilledWorker

    assert isinstance(seen[0][1], KilledWorker)
    assert len(list(tmp_path.glob("death*"))) == ALLOWED_FAILURES + 1


@pytest.mark.slow
def test_local_pool_survives_a_dead_worker(tmp_path):
    """A worker process that dies breaks the local pool: its task (and any other in flight) is
    reported failed, and the tasks not yet started run in a fresh pool."""
    seen, on_result = _collect()
    tasks = [{"x": 1, "dir": str(tmp_path), "die": True}] + [{"x": i} for i in range(2, 6)]
    counts = run_tasks(_square_or_flaky, tasks, on_result=on_result, workers=1 + 1, progress=False)
    got = {t["x"]: r for t, r, _, _ in seen}
    assert len(seen) == 5 and counts["ran"] + counts["failed"] == 5
    assert isinstance(got[1], Exception)
    assert counts["ran"] >= 3  # at most the one task in flight beside it is lost
    assert all(got[x]["y"] == x * x for x in got if not isinstance(got[x], Exception))


@pytest.mark.slow
def test_sigint_handed_to_a_helper_thread_still_stops_a_pool_sweep(slow_pool_driver):
    """The kernel may deliver a process-directed SIGINT to any thread; one that lands on a pool helper
    thread only sets Python's flag, so the main thread must not sleep in an untimed wait. Here the
    signal is sent to a helper thread on purpose (pthread_kill), once both tasks run: the driver
    exits with KeyboardInterrupt within seconds instead of after its two-minute tasks."""
    import time

    code = ("import sys, threading, time; from pathlib import Path; import slowtask\n"
            "from latentdit.experiments.rates.scheduler import run_tasks\n"
            "out = Path(sys.argv[1])\n"
            "def poke():\n"
            "    while len(list(out.glob('started_*'))) < 2:\n        time.sleep(0.1)\n"
            "    signal.pthread_kill(threading.get_ident(), signal.SIGINT)\n"
            "threading.Thread(target=poke, daemon=True).start()\n"
            "try:\n    run_tasks(slowtask.slow, [{'n': n} for n in (1, 2, 3)], on_result=lambda *a: None, workers=2, progress=False)\n"
            "except KeyboardInterrupt:\n    sys.exit(130)\n")
    p = slow_pool_driver(code)
    t0 = time.time()
    assert p.wait(timeout=30) == 130 and time.time() - t0 < 30
