# SPDX-License-Identifier: Apache-2.0
"""One thread knob: `--threads N` and ATTN_NUM_THREADS govern every compute thread of the CLI,
oneDNN's OpenMP pool included (issue 8).

Two checks of one run. The process's thread count at the end (`process_threads`, from
/proc/self/status) counts every pool ever started: with one thread there must be no other
thread at all. That check is exact; it failed when oneDNN kept its own two OpenMP threads.
And a single-threaded process cannot use more CPU time than wall time: CPU time above
1.1 x wall time means a second thread computed (on a loaded machine this check is weaker, as
the second thread gets less CPU, but it cannot fail from noise).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time

import pytest

# A prefill long enough that the q/k/v/o projections (oneDNN matmuls) take seconds.
LONG_PREFILL = ["bench", "layer", "--preset", "llama-3-8b", "--prefill", "2048", "--decode", "1",
                "--json"]


def cpu_and_wall(cmd, env):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, json.loads(proc.stdout)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_one_thread_means_one_core(attn_bin, tmp_path, how):
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env["ATTN_PEAK_CACHE"] = str(tmp_path / "peak.json")
    cmd = [str(attn_bin), *LONG_PREFILL]
    if how == "flag":
        cmd += ["--threads", "1"]
    else:
        env["ATTN_NUM_THREADS"] = "1"
    cpu, wall, report = cpu_and_wall(cmd, env)
    assert report["threads"] == 1
    assert report["process_threads"] == 1, f"{report['process_threads']} threads ran"
    assert cpu <= 1.1 * wall, f"--threads 1 used {cpu:.2f} s CPU in {wall:.2f} s wall"


def test_two_threads_start_both_pools(attn_bin, tmp_path):
    """The counterpart: with --threads 2, attn's pool has one worker and oneDNN's OpenMP pool one
    more, so the process ends with three threads; the knob sizes both."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env["ATTN_PEAK_CACHE"] = str(tmp_path / "peak.json")
    _, _, report = cpu_and_wall([str(attn_bin), *LONG_PREFILL, "--threads", "2"], env)
    assert report["threads"] == 2
    assert report["process_threads"] == 3
