"""The studies (benchmarks/glad_study.py, trajectory_study.py) keep finished cells in the repository
and put them back on an empty --out only when the cell's command (its settings) is the same."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import glad_study  # noqa: E402


def _study(out: Path, epochs: int = 300, iterations: int | None = None) -> "glad_study.Study":
    s = json.loads(json.dumps(glad_study.FULL, default=list))
    s["distill"] = {int(k): v for k, v in s["distill"].items()}
    s["eval"]["epochs"] = epochs
    if iterations is not None:
        s["distill"][10]["iterations"] = iterations
    return glad_study.Study(out.resolve(), s, [10], 0)


def test_a_kept_cell_is_restored_on_an_empty_out_with_the_same_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(glad_study, "KEEP", tmp_path / "kept")
    monkeypatch.setattr(glad_study, "REPO", tmp_path)
    a = _study(tmp_path / "a")
    cell = a.cells["eval_random_ipc10_convnet"]
    cell.out.mkdir(parents=True)
    (cell.out / "results.json").write_text('{"results": {"convnet": 1}}')
    (cell.out / "COMPLETE").write_text("")
    (cell.out / "log.txt").write_text("not kept")
    a.keep(cell.name)
    kept = tmp_path / "kept" / cell.name
    assert sorted(p.name for p in kept.iterdir()) == ["cell.json", "results.json"]
    argv = json.loads((kept / "cell.json").read_text())["argv"]
    assert argv[argv.index("--synset") + 1] == "{out}/random_ipc10"  # machine-independent

    b = _study(tmp_path / "b")  # another --out, same settings: restored, marked finished
    assert b.restore() == [cell.name]
    restored = b.cells[cell.name]
    assert restored.done() and (restored.out / "results.json").read_text() == '{"results": {"convnet": 1}}'
    assert not (restored.out / "log.txt").exists()
    assert b.restore() == []  # already finished: nothing to do

    c = _study(tmp_path / "c", epochs=100)  # other settings: not restored (it reruns)
    assert c.restore() == [] and not c.cells[cell.name].done()


def test_a_kept_evaluation_is_not_restored_when_its_synset_is_made_with_other_settings(tmp_path, monkeypatch):
    """The evaluation's command names only the synset's directory; its kept copy also records the
    command that made the synset, so a synset distilled again otherwise is evaluated again."""
    monkeypatch.setattr(glad_study, "KEEP", tmp_path / "kept")
    a = _study(tmp_path / "a")
    cell = a.cells["eval_mtt_ipc10_vgg11"]
    cell.out.mkdir(parents=True)
    (cell.out / "results.json").write_text("{}")
    (cell.out / "COMPLETE").write_text("")
    a.keep(cell.name)
    argv = json.loads((tmp_path / "kept" / cell.name / "cell.json").read_text())["argv"]
    made_by = argv[argv.index("#synset-made-by") + 1:]
    assert made_by[:3] == ["distill", "--buffer", "{out}/buffer"] and "--lr-grid" in argv
    assert _study(tmp_path / "b").restore() == [cell.name]
    c = _study(tmp_path / "c", iterations=999)  # MTT's synset made otherwise, the evaluation's command the same
    assert [str(x).replace(str(tmp_path / "c"), "{out}") for x in c.cells[cell.name].argv()] == \
        argv[:argv.index("#synset-made-by")]
    assert c.restore() == []


def test_quick_studies_keep_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(glad_study, "KEEP", tmp_path / "kept")
    q = _study(tmp_path / "q")
    q.quick = True
    cell = q.cells["random_ipc10"]
    (cell.out / "synset").mkdir(parents=True)
    (cell.out / "synset" / "synset.safetensors").write_text("x")
    (cell.out / "COMPLETE").write_text("")
    q.keep(cell.name)
    assert not (tmp_path / "kept").exists()


def test_trajectory_study_cells_keep_their_synset_and_wall_time(tmp_path):
    import trajectory_study

    from _meta import KeptCells

    out = tmp_path / "a"
    run = out / "cells" / "mtt_ipc10"
    cell = trajectory_study.Cell("mtt_ipc10", run, ["distill", "--buffer", str(out / "cells" / "buffer"), "--ipc", "10",
                                                    "--out", str(run)], tmp_path / "logs")
    cell.kept = KeptCells(tmp_path / "kept", out)
    (run / "synset").mkdir(parents=True)
    for f in ("synset/synset.safetensors", "synset/meta.json", "summary.json", "COMPLETE", "checkpoint.safetensors"):
        (run / f).write_text(f)
    (run.parent / "mtt_ipc10.wall.json").write_text('{"seconds": 12.5}')
    cell.keep()
    assert not (tmp_path / "kept" / "mtt_ipc10" / "checkpoint.safetensors").exists()  # only what is read later

    out2 = tmp_path / "b"
    run2 = out2 / "cells" / "mtt_ipc10"
    again = trajectory_study.Cell("mtt_ipc10", run2, ["distill", "--buffer", str(out2 / "cells" / "buffer"), "--ipc",
                                                      "10", "--out", str(run2)], tmp_path / "logs")
    again.kept = KeptCells(tmp_path / "kept", out2)
    assert again.restore() and again.done
    assert (run2 / "summary.json").read_text() == "summary.json"
    assert trajectory_study._wall(run2) == 12.5
    other = trajectory_study.Cell("mtt_ipc10", tmp_path / "c" / "cells" / "mtt_ipc10",
                                  ["distill", "--ipc", "1", "--out", str(tmp_path / "c" / "cells" / "mtt_ipc10")],
                                  tmp_path / "logs")
    other.kept = KeptCells(tmp_path / "kept", tmp_path / "c")
    assert not other.restore() and not other.done  # another command: it runs again


def test_a_trajectory_cell_is_restored_only_when_what_it_reads_was_made_the_same_way(tmp_path):
    import trajectory_study

    from _meta import KeptCells

    def cell(out, store_epochs):
        run = out / "cells" / "mtt_t8_ipc1"
        c = trajectory_study.Cell(run.name, run, ["distill", "--buffer", str(out / "cells" / "buffer"),
                                                  "--out", str(run)], tmp_path / "logs")
        c.made_from = ["#store-made-by", "buffer", "--epochs", str(store_epochs), "--out", str(out / "cells" / "buffer")]
        c.kept = KeptCells(tmp_path / "kept", out)
        return c

    a = cell(tmp_path / "a", 10)
    (a.run / "synset").mkdir(parents=True)
    (a.run / "summary.json").write_text("{}")
    (a.run / "COMPLETE").write_text("")
    a.keep()
    assert "#store-made-by" in json.loads((tmp_path / "kept" / a.name / "cell.json").read_text())["argv"]
    assert cell(tmp_path / "b", 10).restore()
    assert not cell(tmp_path / "c", 20).restore()  # a store trained otherwise: the cell runs again


def _finished_distill(run: Path, val: float | None, iteration: int = 100) -> None:
    run.mkdir(parents=True)
    if val is not None:
        (run / "summary.json").write_text(json.dumps({"best_val_accuracy": val, "best_iteration": iteration}))
        (run / "COMPLETE").write_text("")


def test_trajectory_study_chooses_plain_mtts_tplus_on_validation_ties_to_the_earlier(tmp_path):
    import trajectory_study as ts

    s = ts.SETTINGS["full"]
    assert ts.cell_name("mtt_soft", 10, 4) == "mtt_soft_t4_ipc10" and ts.cell_name("kcenter", 1, 4) == "kcenter_ipc1"
    cells = tmp_path / "cells"
    _finished_distill(cells / "mtt_t2_ipc1", 61.0, 300)
    _finished_distill(cells / "mtt_t4_ipc1", 63.5, 400)
    _finished_distill(cells / "mtt_t8_ipc1", None)  # started, not finished: no choice yet
    t, grid = ts.choose_tplus(cells, s, 1)
    assert t is None and [g["best_val"] for g in grid] == [61.0, 63.5, None]
    (cells / "mtt_t8_ipc1" / "summary.json").write_text(json.dumps({"best_val_accuracy": 63.5, "best_iteration": 1}))
    (cells / "mtt_t8_ipc1" / "COMPLETE").write_text("")
    t, grid = ts.choose_tplus(cells, s, 1)
    assert t == 4 and grid[1] == {"tplus": 4, "best_val": 63.5, "best_iteration": 400}
    # every MTT row then runs at the chosen T+, the schedule widening from T+/2 to T+
    rows = dict((k, f) for k, _, f in ts.rows(s, sam=False, tplus={1: t}))
    mtt = rows["mtt"](1)
    assert mtt[mtt.index("--max-start-epoch") + 1] == "4"
    sched = rows["mtt_schedule"](1)
    assert sched[sched.index("--start-epoch-schedule") + 1] == "2:4:80"
    assert sched[sched.index("--max-start-epoch") + 1] == "4"


def test_an_unfinished_evaluation_resumes_in_a_later_session_from_its_kept_networks(store, tmp_path, monkeypatch):
    """A session ends in the middle of an evaluation cell: its trained networks are kept, and a later
    session on another --out puts them back; the evaluation resumes to the uninterrupted result."""
    import shutil

    from _meta import KeptCells
    from mtt_fast.evaluate import protocol
    from tests.cli.conftest import run

    def cell(out: Path) -> tuple[Path, list[str]]:
        ev = out / "cells" / "random_eval_convnetd1"
        return ev, ["eval", "--synset", str(out / "cells" / "random"), "--archs", "convnetd1", "--repeats", "3",
                    "--lr-grid", "0.001,0.01", "--epochs", "2", "--no-progress", "--out", str(ev)]

    a, b, kept = tmp_path / "a", tmp_path / "b", tmp_path / "kept"
    run("distill", "--buffer", store, "--method", "random", "--ipc", "2", "--no-progress",
        "--out", a / "cells" / "random")
    shutil.copytree(a / "cells" / "random", b / "cells" / "random")  # as a kept distillation is put back
    ref_run, ref_argv = cell(tmp_path / "ref")
    shutil.copytree(a / "cells" / "random", tmp_path / "ref" / "cells" / "random")
    run(*ref_argv)

    real, calls = protocol.evaluate_cell, []

    def dies_after_two(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the session ends
        calls.append(args[:3])
        return real(*args, **kw)

    ev_a, argv_a = cell(a)
    with monkeypatch.context() as mp:
        mp.setattr(protocol, "evaluate_cell", dies_after_two)
        r = run(*argv_a, ok=False)
    assert r.exit_code == 2 and "interrupted" in r.output
    ka = KeptCells(kept, a)
    assert ka.keep_partial("ev", ev_a, argv_a) == 2
    assert ka.keep_partial("ev", ev_a, argv_a) == 2  # nothing new: the copy stays
    assert "{out}" in (kept / "ev.partial" / "config.yaml").read_text()

    ev_b, argv_b = cell(b)
    kb = KeptCells(kept, b)
    assert kb.restore_partial("ev", ev_b, argv_b[:-3] + ["--epochs", "3", "--out", str(ev_b)]) == 0  # other settings
    assert not ev_b.exists()
    assert kb.restore_partial("ev", ev_b, argv_b) == 2
    assert str(b) in (ev_b / "config.yaml").read_text()
    assert kb.restore_partial("ev", ev_b, argv_b) == 0  # never over a run that holds something
    calls.clear()
    with monkeypatch.context() as mp:
        mp.setattr(protocol, "evaluate_cell", dies_after_two)
        r = run(*argv_b)
    assert "resuming: 2 networks" in r.output and len(calls) == 2  # 4 networks in all: only 2 trained here
    got = json.loads((ev_b / "results.json").read_text())["results"]
    want = json.loads((ref_run / "results.json").read_text())["results"]
    assert got == want
    # once finished and kept whole, the partial copy goes
    assert kb.keep_partial("ev", ev_b, argv_b) == 0
    kb.keep("ev", ev_b, ["results.json"], argv_b)
    assert not (kept / "ev.partial").exists() and (kept / "ev" / "results.json").is_file()


def test_watch_keeps_networks_as_they_come_and_stops(tmp_path):
    from _meta import KeptCells

    out = tmp_path / "o"
    run = out / "ev"
    (run / "networks").mkdir(parents=True)
    (run / "config.yaml").write_text(f"out: {run}\n")
    kept = KeptCells(tmp_path / "kept", out)
    stop = kept.watch(lambda: [("ev", run, ["eval", "--out", str(run)])], every=0.05)
    (run / "networks" / "report-a-r0.json").write_text("{}")
    import time

    deadline = time.time() + 10
    while not (tmp_path / "kept" / "ev.partial" / "networks" / "report-a-r0.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    (run / "networks" / "report-a-r1.json").write_text("{}")
    stop()  # a last pass: the second network too
    assert sorted(p.name for p in (tmp_path / "kept" / "ev.partial" / "networks").iterdir()) == \
        ["report-a-r0.json", "report-a-r1.json"]
    assert (tmp_path / "kept" / "ev.partial" / "config.yaml").read_text() == "out: {out}/ev\n"


def _fake_partial(kept, name: str, run: Path, argv) -> None:
    (run / "networks").mkdir(parents=True)
    (run / "networks" / "select-alexnet-lr0.01-r0.json").write_text("{}")
    (run / "config.yaml").write_text(f"synset: {run}\n")
    assert kept.keep_partial(name, run, argv) == 1


def test_both_studies_put_back_the_networks_of_an_unfinished_evaluation(tmp_path):
    import shutil

    import trajectory_study

    from _meta import KeptCells

    # glad_study: Study.restore
    name = "eval_random_ipc10_alexnet"
    study = _study(tmp_path / "a")
    study.kept = KeptCells(tmp_path / "kept", study.out)
    _fake_partial(study.kept, name, study.cells[name].out, study.signature(name))
    again = _study(tmp_path / "b")
    again.kept = KeptCells(tmp_path / "kept", again.out)
    again.restore()
    run = again.cells[name].out
    assert (run / "networks" / "select-alexnet-lr0.01-r0.json").is_file() and not again.cells[name].done()
    assert (run / "config.yaml").read_text() == f"synset: {run}\n"

    # trajectory_study: Cell.restore
    shutil.rmtree(tmp_path / "kept")

    def cell(out):
        ev = out / "cells" / "random_ipc1_eval_alexnet"
        c = trajectory_study.Cell(ev.name, ev, ["eval", "--synset", str(out / "cells" / "random_ipc1"), "--out",
                                                str(ev)], tmp_path / "logs")
        c.kept = KeptCells(tmp_path / "kept", out)
        return c

    first = cell(tmp_path / "c")
    _fake_partial(first.kept, first.name, first.run, first.signature)
    second = cell(tmp_path / "d")
    assert not second.restore() and not second.done  # not finished: it runs, resuming
    assert (second.run / "networks" / "select-alexnet-lr0.01-r0.json").is_file()


def _finished_eval(out: Path):
    """A glad study on ``out`` and its ConvNet evaluation at ipc 10, finished (``COMPLETE``, results)."""
    study = _study(out)
    cell = study.cells["eval_random_ipc10_convnet"]
    cell.out.mkdir(parents=True)
    (cell.out / "results.json").write_text("{}")
    (cell.out / "COMPLETE").write_text("")
    return study, cell


def test_a_run_finished_under_out_by_another_command_stops_the_study(tmp_path, monkeypatch):
    import pytest

    monkeypatch.setattr(glad_study, "KEEP", tmp_path / "kept")
    a, cell = _finished_eval(tmp_path / "a")
    stamp = cell.out.parent / f"{cell.out.name}.cell.json"
    a.check_finished()  # finished before stamps existed: taken as this study's, and stamped
    assert json.loads(stamp.read_text())["argv"] == a.kept.signature(a.signature(cell.name))
    a.check_finished()  # same settings: goes on
    # the same --out, evaluations of 100 epochs: the 300-epoch run must not be reported as theirs
    b = _study(tmp_path / "a", epochs=100)
    with pytest.raises(SystemExit) as e:
        b.check_finished()
    msg = str(e.value)
    assert str(cell.out) in msg and "'300' then, '100' now" in msg and msg.count("error:") == 1
    # an unfinished run is not judged (the mtt-fast command itself refuses other settings)
    (cell.out / "COMPLETE").unlink()
    b.check_finished()


def test_a_restored_cell_is_stamped_with_its_command(tmp_path, monkeypatch):
    monkeypatch.setattr(glad_study, "KEEP", tmp_path / "kept")
    a, cell = _finished_eval(tmp_path / "a")
    a.keep(cell.name)
    b = _study(tmp_path / "b")
    assert b.restore() == [cell.name]
    b.check_finished()
    stamp = b.cells[cell.name].out.parent / f"{cell.name.split('_')[-1]}.cell.json"
    assert json.loads(stamp.read_text())["argv"] == b.kept.signature(b.signature(cell.name))
