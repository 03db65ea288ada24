"""`mtt-fast gan train` end to end on a small slice of Fashion-MNIST (16 px)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner
from mtt_fast.cli.main import main

from mtt_fast.data.arrays import FASHION_MNIST_DIR
from mtt_fast.errors import UserError
from mtt_fast.generative import check_generator, load_generator
from mtt_fast.io import load_tensors, read_jsonl

pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR}",
)

TINY = ["--dataset", "fashion-mnist", "--res", "16", "--data-option", "val_size=500", "--max-train-per-class", "20", "--batch-size", "8",
        "--z-dim", "8", "--w-dim", "16", "--channel-base", "64", "--channel-max", "8", "--r1-interval", "4",
        "--checkpoint-every", "10", "--quality-every", "10", "--sample-every", "10", "--quality-samples", "4",
        "--classifier-epochs", "1", "--log-every", "5", "--num-threads", "1", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: one thread (two spin-wait badly on a shared 2-core machine); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(*args, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("gan") / "run"
    r = run("gan", "train", *TINY, "--cache-dir", cache, "--steps", "20", "--out", out)
    return out, r.output


def test_gan_train_writes_everything(finished):
    out, output = finished
    assert "class consistency" in output
    for name in ("generator.safetensors", "generator.json", "checkpoint.safetensors", "checkpoint.json",
                 "classifier.safetensors", "classifier.json", "samples_000010.png", "samples_000020.png",
                 "metrics.jsonl", "config.yaml", "COMPLETE"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "generator.json").read_text())
    assert doc["format"] == "mtt-fast/generator" and doc["step"] == 20
    assert doc["classes"][0] == "T-shirt/top" and doc["normalization"]["mean"] == [0.286]
    assert doc["config"]["img_resolution"] == 16 and doc["dataset"]["name"] == "fashion-mnist"
    recs = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == [5, 10, 15, 20]
    q = [r for r in recs if "class_consistency" in r]
    assert [r["step"] for r in q] == [10, 20]
    assert 0 <= q[-1]["class_consistency"] <= 100 and len(q[-1]["per_class"]) == 10
    assert all(k in recs[0] for k in ("loss_G", "loss_D", "r1", "D_real", "D_fake", "augment_p", "ada_rt"))
    assert all(k in q[-1] for k in ("kid", "kid_per_class", "diversity_gen", "diversity_real", "diversity_ratio"))
    assert "p=" in output or "kid" in output
    best = json.loads((out / "generator_best.json").read_text())
    assert best["step"] == min(q, key=lambda r: r["kid"])["step"] and "kid" in best["best_rule"]
    load_generator(str(out / "generator_best.json"))
    g, ref = load_generator(str(out))
    assert ref["kind"] == "mtt-fast" and ref["num_classes"] == 10
    check_generator(g, str(out))


def test_rerun_is_a_noop(finished, cache):
    out, _ = finished
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = run("gan", "train", *TINY, "--cache-dir", cache, "--steps", "20", "--out", out)
    assert "nothing to do" in r.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    r = run("gan", "train", *TINY, "--cache-dir", cache, "--steps", "30", "--out", out, ok=False)
    assert r.exit_code == 2 and "other settings" in r.output


def test_killed_run_resumes_to_the_same_generator(finished, cache, tmp_path, monkeypatch):
    """Kill a run right after its step-10 checkpoint; rerunning finishes it with exactly the
    weights of the uninterrupted run (every random draw comes from the saved generator state)."""
    from mtt_fast.generative import GANTrainer

    ref_out, _ = finished
    out = tmp_path / "run"
    real_save = GANTrainer.save_checkpoint

    def save_then_die(self):
        real_save(self)
        if self.cur_step == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(GANTrainer, "save_checkpoint", save_then_die)
    r = run("gan", "train", *TINY, "--cache-dir", cache, "--steps", "20", "--out", out, ok=False)
    assert r.exit_code == 2 and "interrupted" in r.output
    assert not (out / "COMPLETE").exists()
    monkeypatch.setattr(GANTrainer, "save_checkpoint", real_save)
    r = run("gan", "train", *TINY, "--cache-dir", cache, "--steps", "20", "--out", out)
    assert "resuming from" in r.output and "at step 10" in r.output
    assert (out / "COMPLETE").is_file()
    a, b = load_tensors(ref_out / "generator.safetensors"), load_tensors(out / "generator.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [5, 10, 15, 20]


def test_nan_loss_stops_with_a_user_error(tmp_path, monkeypatch):
    from mtt_fast.data import load_dataset
    from mtt_fast.generative import GANConfig, train_gan

    bundle = load_dataset("fashion-mnist", None, 16, progress=False, cache_dir=str(tmp_path), options={"val_size": 500})
    cfg = GANConfig(steps=6, batch_size=4, z_dim=8, w_dim=16, channel_base=64, channel_max=8, max_train_per_class=5,
                    checkpoint_every=2, quality_every=100, sample_every=100, quality_samples=2, classifier_epochs=1)
    real = GANConfig.discriminator

    def nan_after(self, b):
        d = real(self, b)
        fwd, calls = d.forward, [0]

        def forward(x, labels):
            calls[0] += 1
            out = fwd(x, labels)
            return out * float("nan") if calls[0] > 9 else out  # 3 D calls per step: NaN from step 4

        d.forward = forward
        return d

    monkeypatch.setattr(GANConfig, "discriminator", nan_after)
    with pytest.raises(UserError, match=r"diverged at step 4 .*--lr.*--r1-gamma.*last checkpoint"):
        train_gan(bundle, tmp_path / "out", cfg, progress=False, log=lambda m: None)
    assert (tmp_path / "out" / "checkpoint.safetensors").is_file()


def test_classifier_from_an_expert_store(tmp_path, cache):
    store = tmp_path / "store"
    run("buffer", "--dataset", "fashion-mnist", "--res", "16", "--data-option", "val_size=500", "--cache-dir", cache,
        "--max-train-per-class", "10", "--width", "8", "--depth", "2", "--num-experts", "1", "--epochs", "1",
        "--batch-size", "32", "--no-progress", "--out", store)
    out = tmp_path / "gan"
    r = run("gan", "train", *TINY, "--cache-dir", cache, "--steps", "4", "--classifier-store", store, "--out", out)
    assert "classifier (store)" in r.output
    assert not (out / "classifier.safetensors").exists()
    doc = json.loads((out / "generator.json").read_text())
    assert doc["classifier"]["source"] == "store" and doc["classifier"]["epoch"] == 1
    # a store of another resolution is refused in one line naming the option
    bad = [a if a != "16" else "8" for a in TINY]
    r = run("gan", "train", *bad, "--cache-dir", cache, "--steps", "4", "--classifier-store", store,
            "--out", tmp_path / "gan8", ok=False)
    assert r.exit_code == 2 and "--classifier-store" in r.output and "16 px" in r.output


def test_gan_sample_with_and_without_truncation(finished, tmp_path):
    out, _ = finished
    r = run("gan", "sample", "--generator", out, "--per-class", "3", "--truncation", "0.5", "--out", tmp_path / "t.png")
    assert "wrote" in r.output and (tmp_path / "t.png").is_file()
    run("gan", "sample", "--generator", out / "generator_best.json", "--out", tmp_path / "b.png")
    assert (tmp_path / "b.png").is_file()
    r = run("gan", "sample", "--generator", out, "--truncation", "1.5", "--out", tmp_path / "x.png", ok=False)
    assert r.exit_code == 2 and "--truncation" in r.output
    # a generator without an average style (from elsewhere) samples, but refuses truncation
    r = run("gan", "sample", "--generator", "tests.generative.factory_gen:make", "--truncation", "0.7",
            "--out", tmp_path / "f.png", ok=False)
    assert r.exit_code == 2 and "no average style" in r.output


def test_a_run_directory_from_before_ada_resumes_with_the_old_recipe(finished, cache, tmp_path):
    """config.yaml written before --augment existed: the old recipe (diffaug) is accepted, ADA refused."""
    import shutil

    import yaml

    src, _ = finished
    out = tmp_path / "old"
    shutil.copytree(src, out)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    for k in ("augment", "ada_target", "ada_interval", "ada_kimg", "quality_truncation"):
        cfg.pop(k)
    cfg["mixing_prob"] = 0.0
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = run("gan", "train", *TINY, "--cache-dir", cache, "--steps", "20", "--out", out, ok=False)
    assert r.exit_code == 2 and "augment" in r.output
    r = run("gan", "train", *TINY, "--cache-dir", cache, "--steps", "20", "--augment", "diffaug", "--style-mixing", "0",
            "--out", out)
    assert "nothing to do" in r.output
