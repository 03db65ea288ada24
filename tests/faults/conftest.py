"""Fixtures of the fault-injection tests: one CPU thread, the process launcher, tiny commands and
their uninterrupted reference runs (in-process, one thread: the same bits as a one-thread process).

The tiny CRC set (``crc_root``) and its finished store (``store``) come from tests/conftest.py.
"""

from __future__ import annotations

import pytest
import torch

from tests.cli.conftest import run
from tests.faults._harness import buffer_args, distill_args, eval_args, gan_args, launcher


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def procs(tmp_path_factory):
    """Start commands as their own (killable) processes: ``procs.start(*args) -> Proc``."""
    z = launcher(tmp_path_factory.mktemp("proc-logs"))
    yield z
    z.close()


@pytest.fixture(scope="session")
def fault_cache(tmp_path_factory, crc_root):
    """A decoded-image cache of the tiny CRC set, filled once (the killed commands only read it)."""
    cache = tmp_path_factory.mktemp("fault-cache")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run("data", "stats", "--dataset", "crc", "--data-root", crc_root, "--res", "16", "--cache-dir", cache,
        "--no-progress")
    torch.set_num_threads(torch_threads)
    return cache


def _reference(tmp_path_factory, name, args_of):
    out = tmp_path_factory.mktemp("reference") / name
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(*args_of(out))
    finally:
        torch.set_num_threads(n)
    return out


@pytest.fixture(scope="session")
def distill_ref(tmp_path_factory, store):
    """The uninterrupted distill run (in-process)."""
    return _reference(tmp_path_factory, "distill", lambda out: distill_args(store, out))


@pytest.fixture(scope="session")
def buffer_ref(tmp_path_factory, crc_root, fault_cache):
    return _reference(tmp_path_factory, "buffer", lambda out: buffer_args(crc_root, fault_cache, out))


@pytest.fixture(scope="session")
def gan_ref(tmp_path_factory, crc_root, fault_cache):
    return _reference(tmp_path_factory, "gan", lambda out: gan_args(crc_root, fault_cache, out))


@pytest.fixture(scope="session")
def fault_synset(tmp_path_factory, store):
    """Random real images, ipc 2, of the tiny store: what the killed evaluations evaluate."""
    out = tmp_path_factory.mktemp("fault-synset") / "random"
    run("distill", "--buffer", store, "--method", "random", "--ipc", "2", "--seed", "1", "--no-progress", "--out", out)
    return out


@pytest.fixture(scope="session")
def eval_ref(tmp_path_factory, fault_synset):
    return _reference(tmp_path_factory, "eval", lambda out: eval_args(fault_synset, out))
