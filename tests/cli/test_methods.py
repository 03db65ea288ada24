"""The other distillation methods through the CLI: DD, and GLaD with a generator."""

from __future__ import annotations

import json

import pytest
import torch

from mtt_fast.experts import TrajectoryStore
from mtt_fast.generative import load_generator, to_model_space
from mtt_fast.io import load_tensors
from mtt_fast.synth import Synset
from tests.cli.conftest import run


def test_dd_through_the_cli(store, tmp_path):
    out = tmp_path / "dd"
    run("distill", "--buffer", store, "--method", "dd", "--ipc", "1", "--syn-steps", "2", "--iterations", "4",
        "--eval-it", "2", "--eval-epochs", "2", "--dd-models", "2", "--batch-real", "8", "--checkpoint-it", "2",
        "--no-progress", "--out", out)
    s = Synset.load(out)
    assert s.meta["method"] == "dd" and s.images.shape[0] == 2
    cfg = s.meta["distill"]
    assert cfg["lr_img"] == 0.01 and cfg["lr_lr"] == 1e-4  # the DD defaults, not MTT's
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if "loss" in r] == [0, 1, 2, 3]
    # every in-loop evaluation scores the test split too, for the labelled max-over-evaluations
    evals = [r for r in lines if "val" in r]
    assert [r["iteration"] for r in evals] == [0, 2, 4] and all("accuracy" in r["test"] for r in evals)
    top = json.loads((out / "summary.json").read_text())["max_test_over_evals"]
    assert top["value"] == max(r["test"]["accuracy"] for r in evals) and "selection on the test set" in top["label"]
    last = Synset.load(out / "synset_last")
    assert last.syn_lr != TrajectoryStore.open(store).expert_lr  # the step size is learned
    assert not torch.equal(last.images, Synset.load(out / "synset").images) or s.meta["iteration"] == 4
    r = run("distill", "--buffer", store, "--method", "dd", "--ipc", "1", "--syn-steps", "2", "--iterations", "4",
            "--eval-it", "2", "--eval-epochs", "2", "--dd-models", "2", "--batch-real", "8", "--checkpoint-it", "2",
            "--no-progress", "--out", out)
    assert "nothing to do" in r.output
    run("eval", "--synset", out, "--repeats", "1", "--epochs", "2", "--no-progress", "--out", tmp_path / "ev")
    assert (tmp_path / "ev" / "results.json").is_file()


def test_sweep_runs_every_point_resumes_and_ranks_by_validation(store, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base:\n  buffer: {store}\n  ipc: 1\n  syn-steps: 2\n  iterations: 2\n  eval_it: 2\n"
                    f"  eval_epochs: 2\n  max_start_epoch: 1\n  expert_epochs: 1\n"
                    f"grid:\n  lr_img: [10, 100]\npoints:\n  - {{lr_img: 10, lr_lr: 1.0e+30}}\n")
    out = tmp_path / "sweep"
    r = run("sweep", grid, "--out", out, "--no-progress", ok=False)
    assert r.exit_code == 2 and "1 of 3 points did not finish" in r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"][-1]["point"].get("lr_lr") == 1e30  # the failed point sorts last
    assert summary["rows"][-1]["status"].startswith("failed")
    vals = [row["best_val"] for row in summary["rows"][:2]]
    assert vals == sorted(vals, reverse=True) and all(v is not None for v in vals)
    assert (out / "lr_img-10" / "COMPLETE").is_file() and (out / "lr_img-100" / "synset" / "grid.png").is_file()
    mtime = (out / "lr_img-10" / "summary.json").stat().st_mtime
    r = run("sweep", grid, "--out", out, "--no-progress", ok=False)  # finished points are skipped
    assert (out / "lr_img-10" / "summary.json").stat().st_mtime == mtime
    assert "nothing to do" in r.output


def test_sweep_bad_grid_is_one_clear_error(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base:\n  buffer: x\ngrid:\n  lr_imgg: [1, 2]\n")
    r = run("sweep", grid, "--out", tmp_path / "s", ok=False)
    assert r.exit_code == 2 and "unknown distill option 'lr_imgg'" in r.output
    grid.write_text("grid:\n  lr_img: 5\n")
    r = run("sweep", grid, "--out", tmp_path / "s", ok=False)
    assert r.exit_code == 2 and "must be a non-empty list" in r.output


GAN_TINY = ["--res", "16", "--steps", "4", "--batch-size", "4", "--z-dim", "8", "--w-dim", "16", "--channel-base", "64",
            "--channel-max", "8", "--r1-interval", "2", "--checkpoint-every", "2", "--quality-every", "4",
            "--sample-every", "4", "--quality-samples", "2", "--classifier-epochs", "1", "--log-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def generator_dir(crc_root, tmp_path_factory):
    """A tiny generator trained on the same tiny CRC set as the store."""
    out = tmp_path_factory.mktemp("gan") / "gan"
    run("gan", "train", "--dataset", "crc", "--data-root", crc_root, "--cache-dir", tmp_path_factory.mktemp("c"),
        *GAN_TINY, "--out", out)
    return out


GLAD = ["--method", "glad", "--ipc", "2", "--syn-steps", "2", "--iterations", "3", "--eval-it", "3", "--eval-epochs", "2",
        "--max-start-epoch", "1", "--expert-epochs", "1", "--g-batch", "3", "--no-progress"]


@pytest.mark.parametrize("space, layer, learn_g", [("wp", -1, False), ("w", 0, True), ("z", 1, False), ("p", 0, False)])
def test_gan_train_then_glad_distill_then_eval(store, generator_dir, tmp_path, space, layer, learn_g):
    out = tmp_path / "glad"
    args = ["distill", "--buffer", store, *GLAD, "--generator", generator_dir, "--space", space, "--layer", str(layer),
            *(["--learn-g"] if learn_g else []), "--out", out]
    run(*args)
    s = Synset.load(out)
    assert s.meta["method"] == "glad" and s.images.shape == (4, 3, 16, 16)
    assert s.meta["glad"]["space"] == space and s.meta["glad"]["generator"]["kind"] == "mtt-fast"
    lat = load_tensors(out / "synset" / "latents.safetensors")
    ref = json.loads((out / "synset" / "generator.json").read_text())
    assert ref["space"] == space and ref["layer"] == layer
    if space == "p":
        assert set(lat) == {"labels", "pixels"}
    else:
        assert ("f_latents" in lat) == (layer >= 0)
        assert (out / "synset" / "generator.safetensors").is_file() == learn_g
        # the stored images are the generator's rendering of the stored latents
        G, _ = load_generator(str(generator_dir))
        if learn_g:
            G.load_state_dict(load_tensors(out / "synset" / "generator.safetensors"))
        ws = {"wp": lambda t: t, "w": lambda t: t.unsqueeze(1).expand(-1, G.num_ws, -1),
              "z": lambda t: G.mapping(t, lat["labels"]).unsqueeze(1).expand(-1, G.num_ws, -1)}[space](lat["latents"])
        with torch.no_grad():
            img = G.render(lat.get("f_latents"), ws, layer)
        torch.testing.assert_close(to_model_space(img, s.meta["normalization"]["mean"], s.meta["normalization"]["std"]),
                                   s.images, rtol=1e-4, atol=1e-4)
    assert "nothing to do" in run(*args).output
    run("eval", "--synset", out, "--repeats", "1", "--epochs", "2", "--no-progress", "--out", tmp_path / "ev")


def test_glad_resume_refuses_another_generator(store, generator_dir, tmp_path, monkeypatch):
    out = tmp_path / "glad"
    args = ["distill", "--buffer", store, *GLAD, "--generator", generator_dir, "--checkpoint-it", "1", "--out", out]
    from mtt_fast.distill import loop

    calls = {"n": 0}
    real_step = loop.Distiller.step

    def killed_after_two(self):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(loop.Distiller, "step", killed_after_two)
    r = run(*args, ok=False)
    assert r.exit_code == 2 and "interrupted" in r.output
    monkeypatch.undo()
    from safetensors import safe_open

    from mtt_fast.io import save_tensors

    path = out / "checkpoint.safetensors"  # one file: the tensors, and the loop state in its metadata
    with safe_open(str(path), framework="pt") as f:
        ckpt = json.loads(f.metadata()["checkpoint"])
    assert ckpt["iteration"] == 2 and ckpt["generator_sha256"] and not (out / "checkpoint.json").exists()
    ckpt["generator_sha256"] = "0" * 64  # as if the generator file had been replaced
    save_tensors(path, load_tensors(path), metadata={"checkpoint": json.dumps(ckpt)})
    r = run(*args, ok=False)
    assert r.exit_code == 2 and "is not the generator this run started with" in r.output


def test_glad_bad_generator_is_one_clear_error(store, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript archive")
    for spec, words in ((bad, "bad.pt"), (tmp_path / "missing", "missing"), ("no_such_module_xyz:make", "no_such_module_xyz")):
        r = run("distill", "--buffer", store, *GLAD, "--generator", spec, "--out", tmp_path / "o", ok=False)
        assert r.exit_code == 2 and words in r.output and r.output.count("\n") <= 2, r.output
    r = run("distill", "--buffer", store, *GLAD, "--out", tmp_path / "o2", ok=False)
    assert r.exit_code == 2 and "needs --generator" in r.output


def test_glad_generator_of_another_resolution_is_refused(store, crc_root, tmp_path):
    gan = tmp_path / "gan8"
    run("gan", "train", "--dataset", "crc", "--data-root", crc_root, "--cache-dir", tmp_path / "c",
        *[a if a != "16" else "8" for a in GAN_TINY], "--out", gan)
    r = run("distill", "--buffer", store, *GLAD, "--generator", gan, "--out", tmp_path / "o", ok=False)
    assert r.exit_code == 2 and "train a generator at --res 16" in r.output


def test_block_impl_reference_and_fused_distill_the_same(store, tmp_path):
    """The fused student blocks change speed, not the result (same seed, a few iterations)."""
    from mtt_fast.ops import block

    args = ["distill", "--buffer", store, "--ipc", "1", "--syn-steps", "3", "--iterations", "2", "--eval-it", "2",
            "--eval-epochs", "2", "--max-start-epoch", "1", "--expert-epochs", "1", "--no-progress"]
    run(*args, "--block-impl", "reference", "--out", tmp_path / "ref")
    if not block.fused_available("cpu", torch.float32):
        r = run(*args, "--block-impl", "fused", "--out", tmp_path / "fused", ok=False)
        assert r.exit_code == 2 and "--block-impl fused" in r.output
        return
    run(*args, "--block-impl", "fused", "--out", tmp_path / "fused")
    a, b = Synset.load(tmp_path / "ref" / "synset_last"), Synset.load(tmp_path / "fused" / "synset_last")
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-4)
    assert abs(a.syn_lr - b.syn_lr) < 1e-6


def test_glad_learns_soft_labels_like_mtt(store, generator_dir, tmp_path):
    from mtt_fast.distill.soft import ExpertNetwork
    from mtt_fast.experts import TrajectoryStore
    out, still = tmp_path / "glad-soft", tmp_path / "glad-still"
    base = ["distill", "--buffer", store, *GLAD, "--generator", generator_dir, "--soft-labels"]
    run(*base, "--lr-y", "5", "--out", out)
    run(*base, "--lr-y", "1e-12", "--lr-w", "1e-12", "--lr-lr", "1e-12", "--out", still)
    s, init = Synset.load(out / "synset_last"), Synset.load(still / "synset_last")
    assert s.soft_labels.shape == (4, len(s.meta["classes"])) and s.meta["soft_label_source"]["learned"] is True
    # the labels start at the labelling expert's logits on the generator's first images, then move
    expert = ExpertNetwork(TrajectoryStore.open(store))
    torch.testing.assert_close(init.soft_labels, expert.logits(init.images), rtol=1e-4, atol=1e-4)
    assert (s.soft_labels - init.soft_labels).abs().max() > 1e-3
