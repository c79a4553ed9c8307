import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread(_seed_and_threads):
    """Tiny kernels: one intra-op thread avoids OpenMP barrier stalls on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A job started in the background by a non-interactive shell (`cmd &`, `nohup cmd &`) inherits SIGINT
# ignored, and Python keeps an inherited SIG_IGN instead of installing its KeyboardInterrupt handler;
# every process pytest starts inherits that too. Drivers of Ctrl-C tests first set the state a
# terminal gives, so the test measures the code under test, not the shell that started pytest.
TERMINAL_SIGINT = ("import signal\n"
                   "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])\n"
                   "signal.signal(signal.SIGINT, signal.default_int_handler)\n")


@pytest.fixture
def slow_pool_driver(tmp_path):
    """Starts ``code`` (a Python driver, run with the directory as ``sys.argv[1]`` and a module
    ``slowtask`` whose ``slow(task, threads)`` touches ``started_<n>`` and sleeps two minutes) in its own
    session, with a terminal's SIGINT state, and returns the process once two tasks are running.
    The process group is killed at teardown."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "slowtask.py").write_text(f"import pathlib, time\n\ndef slow(task, threads):\n"
                                          f"    pathlib.Path({str(tmp_path)!r}, f\"started_{{task['n']}}\").touch()\n"
                                          f"    time.sleep(120)\n    return {{'value': 1.0}}\n")
    procs = []

    def start(code):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
        p = subprocess.Popen([sys.executable, "-c", TERMINAL_SIGINT + code, str(tmp_path)], env=env,
                             start_new_session=True)
        procs.append(p)
        deadline = time.time() + 120
        while time.time() < deadline and len(list(tmp_path.glob("started_*"))) < 2:
            assert p.poll() is None, f"the driver ended before its tasks started (status {p.returncode})"
            time.sleep(0.2)
        assert len(list(tmp_path.glob("started_*"))) == 2, "the two workers did not start their tasks in 120 s"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
