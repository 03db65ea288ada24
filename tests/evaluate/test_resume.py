"""A killed ``eval`` resumes from the networks it finished, to the same numbers.

Each trained network's metrics are saved in ``OUT/networks/`` as it finishes; the same command
run again takes them back and trains only the rest (the selection networks of ``--lr-grid``
included), and ``results.json`` is what an uninterrupted run writes.
"""

from __future__ import annotations

import json

import pytest

from mtt_fast.evaluate import protocol
from tests.cli.conftest import run

ARGS = ["--archs", "convnet,convnetd1", "--repeats", "2", "--lr-grid", "0.001,0.01", "--epochs", "2", "--no-progress"]


REAL = protocol.evaluate_cell


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def synset(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    run("distill", "--buffer", store, "--method", "random", "--ipc", "2", "--no-progress", "--out", tmp / "random")
    return tmp / "random"


def _counting(monkeypatch, crash_after: int | None = None) -> list:
    """Count (and optionally crash after that many) trained networks."""
    calls = []

    def counted(arch, lr, repeat, *a, **k):
        if crash_after is not None and len(calls) == crash_after:
            raise Crash
        calls.append((arch, lr, repeat))
        return REAL(arch, lr, repeat, *a, **k)

    monkeypatch.setattr(protocol, "evaluate_cell", counted)
    return calls


def _results(out):
    res = json.loads((out / "results.json").read_text())
    return {a: (r["runs"], r["lr"], r.get("lr_selection")) for a, r in res["results"].items()}


@pytest.mark.parametrize("crash_after", [1, 3, 5])
def test_a_crashed_eval_resumes_from_its_finished_networks_to_the_same_results(synset, tmp_path, monkeypatch,
                                                                                crash_after):
    ref = tmp_path / "ref"
    calls = _counting(monkeypatch)
    run("eval", "--synset", synset, *ARGS, "--out", ref)
    total = len(calls)
    assert total == 2 * 2 + 2 * 1  # two candidates per architecture, then repeat 1 of each
    assert len(list((ref / "networks").glob("*.json"))) == total

    out = tmp_path / "ev"
    calls = _counting(monkeypatch, crash_after=crash_after)
    with pytest.raises(Crash):
        run("eval", "--synset", synset, *ARGS, "--out", out)
    assert not (out / "results.json").exists() and not (out / "COMPLETE").exists()
    assert len(list((out / "networks").glob("*.json"))) == crash_after

    calls = _counting(monkeypatch)
    r = run("eval", "--synset", synset, *ARGS, "--out", out)
    assert f"resuming: {crash_after} network" in r.output
    assert len(calls) == total - crash_after  # only the networks the crash left untrained
    assert _results(out) == _results(ref)


def test_a_damaged_saved_network_is_one_line_naming_it(synset, tmp_path, monkeypatch):
    out = tmp_path / "ev"
    _counting(monkeypatch, crash_after=1)
    with pytest.raises(Crash):
        run("eval", "--synset", synset, *ARGS, "--out", out)
    (saved,) = (out / "networks").glob("*.json")
    saved.write_text("{not json")
    monkeypatch.undo()
    r = run("eval", "--synset", synset, *ARGS, "--out", out, ok=False)
    last = r.output.strip().splitlines()[-1]
    assert r.exit_code == 2 and last.startswith("error:") and str(saved) in last, r.output
    assert not (out / "results.json").exists()
