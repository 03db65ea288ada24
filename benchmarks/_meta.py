"""What every benchmark JSON records about the source it ran: the git commit, and whether
the working tree had uncommitted changes.

``MTT_FAST_SOURCE_COMMIT`` overrides the commit: a lent GPU machine gets a copy of the
working tree whose git metadata may be older than the files (``benchmarks/device_run.sh``
sets it from ``.data/commit``, written before the call).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time


def source_commit() -> str | None:
    """``HEAD`` (``+dirty`` when tracked files differ from it), or the override."""
    override = os.environ.get("MTT_FAST_SOURCE_COMMIT")
    if override:
        return override
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], check=False, stderr=subprocess.DEVNULL).returncode
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty == 1 else "")


def median_seconds(fn, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` after one warm-up call (CPU work:
    nothing to synchronize)."""
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)
