"""retain_freed_memory: freed CPU memory is reused without page faults, counted by the default
budget, and switched off by MTT_FAST_MALLOC=system (each case in a fresh process: the setting
is process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")

CHILD = r"""
import resource, sys, torch
from mtt_fast.match.auto import DEFAULT_BUDGET_FRACTION, DEFAULT_BUDGET_RESERVE, default_memory_budget
from mtt_fast.runtime import retain_freed_memory, retained_free_bytes
from mtt_fast.stages.common import resolve_device

resolve_device("cpu")  # what every stage calls first
faults = []
for _ in range(3):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    xs = [torch.ones(10_000_000) for _ in range(8)]  # 8 x 40 MB: above glibc's largest mmap threshold (32 MiB)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    del xs
mem = int(next(l for l in open("/proc/meminfo") if l.startswith("MemAvailable:")).split()[1]) * 1024
budget, _ = default_memory_budget("cpu")  # what auto's default budget counts as free, beyond MemAvailable
counted = (budget + DEFAULT_BUDGET_RESERVE) / DEFAULT_BUDGET_FRACTION
print(retain_freed_memory(), faults[-1], retained_free_bytes(), int(counted - mem))
"""


def _child(**env) -> list[str]:
    p = subprocess.run([sys.executable, "-c", CHILD], env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout.split()


def test_freed_memory_is_reused_without_faults_and_counted_as_available():
    on, faults, free, extra = _child(MTT_FAST_MALLOC="retain")
    if on != "True":
        pytest.skip("this C library has no mallopt settings (not glibc)")
    # 320 MB touched afresh is ~78,000 page faults; reused, a few hundred (one 40 MB tensor's worth,
    # ~10,000, where the heap's free space happened to be split by small allocations)
    assert int(faults) < 20_000, faults
    assert int(free) >= 300_000_000, free  # the freed tensors, kept for reuse
    assert int(extra) >= 150_000_000, (extra, free)  # and counted by auto's default budget beside MemAvailable


def test_system_allocator_when_asked():
    on, faults, free, _ = _child(MTT_FAST_MALLOC="system")
    assert on == "False" and int(free) == 0
    assert int(faults) > 50_000, faults  # glibc's default: every round maps and faults its memory again


def test_unknown_value_is_a_user_error_naming_the_variable():
    p = subprocess.run([sys.executable, "-c", "from mtt_fast.runtime import retain_freed_memory as r; r()"],
                       capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "MTT_FAST_MALLOC": "jemalloc"})
    assert p.returncode != 0 and "MTT_FAST_MALLOC='jemalloc': expected 'retain'" in p.stderr


def test_same_bits_with_either_allocator(tmp_path):
    """Keeping freed memory changes speed, not results: one buffer + MTT distillation in two
    fresh processes, retained heap and system allocator, writes identical tensors."""
    from tests.fixtures.datasets import make_crc
    from tests.fixtures.hashing import tensors_hash

    root = make_crc(tmp_path / "crc", patients_per_class=3, tiles_per_patient=2, size=32, test_patients_per_class=1)
    hashes = {}
    for mode in ("retain", "system"):
        out = tmp_path / mode
        env = {**os.environ, "MTT_FAST_MALLOC": mode, "OMP_NUM_THREADS": "1"}
        common = ["--no-progress", "--seed", "1"]
        for args in (["buffer", "--dataset", "crc", "--data-root", str(root), "--cache-dir", str(tmp_path / "cache"),
                      "--res", "16", "--arch", "convnet", "--width", "8", "--depth", "2", "--batch-size", "8",
                      "--num-experts", "1", "--epochs", "2", *common, "--out", str(out / "buf")],
                     ["distill", "--buffer", str(out / "buf"), "--method", "mtt", "--ipc", "2", "--syn-steps", "3",
                      "--iterations", "3", "--eval-it", "100", "--max-start-epoch", "1", "--expert-epochs", "1",
                      *common, "--out", str(out / "mtt")]):
            p = subprocess.run([sys.executable, "-m", "mtt_fast", *args], env=env, capture_output=True, text=True,
                               timeout=300, check=False)
            assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        hashes[mode] = (tensors_hash(out / "buf" / "expert_000.safetensors"),
                        tensors_hash(out / "mtt" / "synset" / "synset.safetensors"))
    assert hashes["retain"] == hashes["system"]
