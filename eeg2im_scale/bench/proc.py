"""Running one benchmark job as a subprocess, logged and bounded in time."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def run_logged(command: list[str], env: dict, log_path: Path, timeout_s: float, cwd: Path) -> tuple[int, float]:
    """Run ``command`` with its output in ``log_path`` (the command line first); → (exit code,
    seconds). It runs in its own session, so a job past ``timeout_s`` is killed with every
    process it started (a launcher's ranks), never left running."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
    return code, time.perf_counter() - start
