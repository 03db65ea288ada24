"""benchmarks/glad_study.py keeps finished cells in the repository and puts them back on an empty
--out only when the cell's command (its settings) is the same."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import glad_study  # noqa: E402


def _study(out: Path, epochs: int = 300) -> "glad_study.Study":
    s = json.loads(json.dumps(glad_study.FULL, default=list))
    s["distill"] = {int(k): v for k, v in s["distill"].items()}
    s["eval"]["epochs"] = epochs
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
