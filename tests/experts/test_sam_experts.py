"""Sharpness-aware experts (``buffer --sam-rho``, ``--gsam-alpha``): recorded, resumable, checked."""

from __future__ import annotations

import json

import pytest
import torch

from mtt_fast.experts import ExpertConfig, TrajectoryStore, train_experts
from tests.cli.conftest import TINY, run


@pytest.fixture(scope="module")
def crc(crc_bundle_one_thread):
    return crc_bundle_one_thread


def small(**kw) -> ExpertConfig:
    return ExpertConfig(**{"width": 8, "depth": 2, "num_experts": 2, "epochs": 2, "batch_size": 8, "seed": 3, **kw})


def _trajectories(path) -> list[torch.Tensor]:
    store = TrajectoryStore.open(path)
    return [store.trajectory(k) for k in range(store.num_experts)]


def quiet(m: str) -> None:
    pass


def test_sam_experts_resume_to_the_same_bits_and_record_rho(crc, tmp_path):
    cfg = small(sam_rho=0.05, gsam_alpha=0.3, sam_adaptive=True)
    whole = train_experts(crc, tmp_path / "whole", cfg, progress=False, log=quiet)
    # a run killed after its first expert: the store lists one; the rerun trains the second
    train_experts(crc, tmp_path / "resumed", small(sam_rho=0.05, gsam_alpha=0.3, sam_adaptive=True, num_experts=1),
                  progress=False, log=quiet)
    train_experts(crc, tmp_path / "resumed", cfg, progress=False, log=quiet)
    for a, b in zip(_trajectories(tmp_path / "whole"), _trajectories(tmp_path / "resumed"), strict=True):
        assert torch.equal(a, b)
    meta = json.loads((tmp_path / "whole" / "meta.json").read_text())
    assert meta["training"]["sam_rho"] == 0.05 and meta["training"]["gsam_alpha"] == 0.3
    assert whole["training"]["sam_rho"] == 0.05


def test_rho_zero_is_plain_sgd_and_rho_changes_the_experts(crc, tmp_path):
    train_experts(crc, tmp_path / "default", small(num_experts=1), progress=False, log=quiet)
    train_experts(crc, tmp_path / "zero", small(num_experts=1, sam_rho=0.0), progress=False, log=quiet)
    train_experts(crc, tmp_path / "sam", small(num_experts=1, sam_rho=0.05), progress=False, log=quiet)
    plain, zero, sam = (_trajectories(tmp_path / d)[0] for d in ("default", "zero", "sam"))
    assert torch.equal(plain, zero)
    assert torch.equal(plain[0], sam[0])  # same seeded initialization
    assert not torch.equal(plain[1], sam[1])


def test_buffer_cli_records_sam_and_refuses_bad_settings(crc_root, tmp_path):
    args = ["buffer", "--dataset", "crc", "--data-root", crc_root, "--cache-dir", tmp_path / "cache", *TINY,
            "--num-experts", "1", "--epochs", "1"]
    for extra, msg in ((["--sam-rho", "-1"], "--sam-rho must be a finite number at least 0"),
                       (["--gsam-alpha", "0.3"], "--gsam-alpha 0.3 needs --sam-rho above 0"),
                       (["--sam-rho", "0.01", "--gsam-alpha", "nan"], "--gsam-alpha must be a finite number"),
                       (["--sam-adaptive"], "--sam-adaptive needs --sam-rho above 0")):
        r = run(*args, *extra, "--out", tmp_path / "bad", ok=False)
        assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith(f"error: {msg}"), r.output
        assert not (tmp_path / "bad").exists()
    run(*args, "--sam-rho", "0.01", "--gsam-alpha", "0.3", "--sam-adaptive", "--out", tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert (meta["training"]["sam_rho"], meta["training"]["gsam_alpha"], meta["training"]["sam_adaptive"]) \
        == (0.01, 0.3, True)
    # another rho on the same --out is refused, naming the setting
    r = run(*args, "--sam-rho", "0.02", "--gsam-alpha", "0.3", "--sam-adaptive", "--out", tmp_path / "s", ok=False)
    assert r.exit_code == 2 and "sam_rho" in r.output, r.output


def test_a_store_written_before_sam_existed_is_still_finished(crc_root, tmp_path):
    """Its config.yaml has no sam_rho / gsam_alpha / sam_adaptive: the defaults (plain SGD) are what it was made with."""
    import yaml

    args = ["buffer", "--dataset", "crc", "--data-root", crc_root, "--cache-dir", tmp_path / "cache", *TINY,
            "--num-experts", "1", "--epochs", "1", "--out", tmp_path / "old"]
    run(*args)
    cfg_file = tmp_path / "old" / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    assert cfg.pop("sam_rho") == 0.0 and cfg.pop("gsam_alpha") == 0.0 and cfg.pop("sam_adaptive") is False
    cfg_file.write_text(yaml.safe_dump(cfg))
    assert "nothing to do" in run(*args).output
    assert run(*args, "--sam-rho", "0.01", ok=False).exit_code == 2
