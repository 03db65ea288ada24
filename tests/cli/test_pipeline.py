"""buffer -> distill -> eval through the command line, on a tiny CRC-layout dataset."""

import json

import torch
from safetensors.torch import load_file

from mtt_fast.experts import TrajectoryStore
from mtt_fast.synth import Synset
from tests.cli.conftest import run

DISTILL = ["--method", "mtt", "--ipc", "2", "--syn-steps", "3", "--expert-epochs", "1", "--max-start-epoch", "2",
           "--iterations", "4", "--eval-it", "2", "--eval-epochs", "3", "--lr-img", "100", "--no-progress"]


def test_store_layout_and_snapshots_differ(store):
    meta = json.loads((store / "meta.json").read_text())
    assert meta["format"] == "mtt-fast/trajectories" and len(meta["experts"]) == 2
    assert meta["classes"] == ["MSS", "MSIMUT"] and meta["res"] == 16
    traj = load_file(str(store / "expert_000.safetensors"))["trajectory"]
    assert traj.shape == (1, 4, meta["num_params"])
    # each epoch's snapshot is a copy: consecutive snapshots differ (the reference's CPU bug)
    for e in range(3):
        assert not torch.equal(traj[0, e], traj[0, e + 1])
    # different experts start from different initializations
    other = load_file(str(store / "expert_001.safetensors"))["trajectory"]
    assert not torch.equal(traj[0, 0], other[0, 0])
    assert (store / "split.json").is_file() and (store / "COMPLETE").is_file()


def test_distill_then_eval(store, tmp_path):
    out = tmp_path / "mtt"
    r = run("distill", "--buffer", store, *DISTILL, "--out", out)
    assert "engine auto" in r.output  # the default engine, which says what it kept
    assert "engine auto: keeps the graphs of 3 of 3 steps" in r.output
    assert "peak resident memory" in r.output or "peak CUDA memory" in r.output
    synset = Synset.load(out)
    assert synset.images.shape == (4, 3, 16, 16) and synset.labels.tolist() == [0, 0, 1, 1]
    assert synset.syn_lr is not None and (out / "synset" / "grid.png").stat().st_size > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines if "loss" in x] == [0, 1, 2, 3]
    assert [x["iteration"] for x in lines if "val" in x] == [0, 2, 4]
    # the images moved away from their real initialization (the random baseline's draw with the same seed)
    last = Synset.load(out / "synset_last")
    assert last.meta["iteration"] == 4
    run("distill", "--buffer", store, "--method", "random", "--ipc", "2", "--no-progress", "--out", tmp_path / "init")
    init = Synset.load(tmp_path / "init")
    assert torch.equal(init.labels, last.labels) and not torch.allclose(init.images, last.images, atol=1e-3)

    ev = tmp_path / "eval"
    r = run("eval", "--synset", out, "--archs", "convnet,alexnet", "--repeats", "2", "--epochs", "3",
            "--no-progress", "--out", ev)
    res = json.loads((ev / "results.json").read_text())
    assert res["metric"] == "auc" and set(res["results"]) == {"convnet", "alexnet"}
    for arch in ("convnet", "alexnet"):
        runs = res["results"][arch]["runs"]
        assert len(runs) == 2 and all(0 <= x["accuracy"] <= 100 and len(x["per_class_recall"]) == 2 for x in runs)
    md = (ev / "results.md").read_text()
    assert "| Synset | Img/Cls | convnet | alexnet | Average |" in md and "AUC" in md


def test_random_baseline(store, tmp_path):
    out = tmp_path / "rnd"
    run("distill", "--buffer", store, "--method", "random", "--ipc", "3", "--out", out, "--no-progress")
    s = Synset.load(out)
    assert s.syn_lr is None and s.labels.tolist() == [0, 0, 0, 1, 1, 1] and s.meta["method"] == "random"


def test_distill_resumes_after_a_kill_and_matches_an_uninterrupted_run(store, tmp_path, monkeypatch):
    from mtt_fast.distill.loop import Distiller

    args = ["distill", "--buffer", store, *DISTILL, "--iterations", "5", "--checkpoint-it", "2"]
    run(*args, "--out", tmp_path / "whole")

    real_step = Distiller.step

    def dying_step(self):
        if self.iteration == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Distiller, "step", dying_step)
    r = run(*args, "--out", tmp_path / "killed", ok=False)
    assert r.exit_code == 2 and "resume" in r.output
    monkeypatch.setattr(Distiller, "step", real_step)
    r = run(*args, "--out", tmp_path / "killed")
    assert "resuming from iteration 2" in r.output
    a, b = Synset.load(tmp_path / "whole" / "synset_last"), Synset.load(tmp_path / "killed" / "synset_last")
    assert torch.equal(a.images, b.images) and a.syn_lr == b.syn_lr
    its = [json.loads(x)["iteration"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
           if "loss" in x]
    assert its == [0, 1, 2, 3, 4]


def test_buffer_resumes_after_last_finished_expert(store, crc_root, tmp_path):
    # a copy of the finished store whose second expert "was killed": drop it from meta.json
    import shutil

    from tests.cli.conftest import TINY

    out = tmp_path / "buf"
    shutil.copytree(store, out)
    meta = json.loads((out / "meta.json").read_text())
    meta["experts"] = meta["experts"][:1]
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "COMPLETE").unlink()
    (out / "expert_001.safetensors").unlink()
    first = load_file(str(out / "expert_000.safetensors"))["trajectory"]
    r = run("buffer", "--dataset", "crc", "--data-root", crc_root, *TINY, "--num-experts", "2", "--epochs", "3",
            "--cache-dir", tmp_path / "cache", "--out", out)
    assert "resuming: 1 of 2" in r.output
    assert torch.equal(load_file(str(out / "expert_000.safetensors"))["trajectory"], first)
    # the retrained expert is the same as in the uninterrupted run (seeded per expert)
    assert torch.equal(load_file(str(out / "expert_001.safetensors"))["trajectory"],
                       load_file(str(store / "expert_001.safetensors"))["trajectory"])
    assert TrajectoryStore.open(out).num_experts == 2


def test_rerun_of_finished_run_is_a_no_op(store, crc_root, tmp_path):
    from tests.cli.conftest import TINY

    before = (store / "expert_000.safetensors").stat().st_mtime_ns
    r = run("buffer", "--dataset", "crc", "--data-root", crc_root, *TINY, "--num-experts", "2", "--epochs", "3",
            "--cache-dir", tmp_path / "cache", "--out", store)
    assert "nothing to do" in r.output
    assert (store / "expert_000.safetensors").stat().st_mtime_ns == before


def test_info_and_data_stats(crc_root, tmp_path):
    r = run("info")
    assert "torch" in r.output and "compiled core" in r.output
    from mtt_fast.ops import extension_info

    if extension_info()["loaded"]:  # the fused ops it reports are the ones that are live
        assert "augmentation (DSA): fused op on cpu" in r.output
    r = run("data", "stats", "--dataset", "crc", "--data-root", crc_root, "--res", "16", "--cache-dir",
            tmp_path / "c", "--no-progress")
    assert "MSS" in r.output and "MSIMUT" in r.output


def test_config_file_sets_defaults_and_flags_win(store, tmp_path):
    cfg = tmp_path / "d.yaml"
    cfg.write_text("method: random\nipc: 2\n")
    out = tmp_path / "r"
    run("distill", "--config", cfg, "--buffer", store, "--ipc", "1", "--out", out, "--no-progress")
    s = Synset.load(out)
    assert s.meta["method"] == "random" and len(s.labels) == 2
