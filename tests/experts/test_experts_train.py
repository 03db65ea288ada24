"""Expert training (mtt_fast.experts.train) on a tiny on-disk CRC set: snapshots, seeding, divergence."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtt_fast.errors import UserError
from mtt_fast.experts import ExpertConfig, TrajectoryStore, train_experts
from mtt_fast.models import FlatParams, seeded_network


@pytest.fixture(scope="module")
def crc(crc_bundle_one_thread):
    return crc_bundle_one_thread


def small(**kw) -> ExpertConfig:
    return ExpertConfig(**{"width": 8, "depth": 2, "num_experts": 2, "epochs": 3, "batch_size": 8, "seed": 3, **kw})


def test_a_snapshot_at_init_and_after_every_epoch(crc, tmp_path):
    cfg = small()
    meta = train_experts(crc, tmp_path / "store", cfg, progress=False, log=lambda m: None)
    assert len(meta["experts"]) == 2
    store = TrajectoryStore.open(tmp_path / "store")
    for k in range(2):
        snaps = store.snapshots(k, list(range(cfg.epochs + 1)))
        assert len(snaps) == cfg.epochs + 1
        # snapshot 0 is the seeded initialization; every epoch moves the weights
        init = seeded_network(cfg.arch, crc.channels, crc.num_classes, crc.res, width=cfg.width, depth=cfg.depth,
                              seed=cfg.seed * 100003 + k)
        assert torch.equal(snaps[0], FlatParams.of(init).flatten(init))
        for a, b in itertools.pairwise(snaps):
            assert not torch.equal(a, b)
        rec = meta["experts"][k]
        assert len(rec["train_loss"]) == cfg.epochs and all(l > 0 for l in rec["train_loss"])
    # two experts of one run start from different seeds
    assert not torch.equal(store.snapshots(0, [0])[0], store.snapshots(1, [0])[0])


def test_same_seed_same_bits(crc, tmp_path):
    cfg = small(num_experts=1, epochs=2)
    train_experts(crc, tmp_path / "a", cfg, progress=False, log=lambda m: None)
    train_experts(crc, tmp_path / "b", cfg, progress=False, log=lambda m: None)
    a, b = TrajectoryStore.open(tmp_path / "a"), TrajectoryStore.open(tmp_path / "b")
    assert torch.equal(a.snapshots(0, [0, 1, 2])[2], b.snapshots(0, [0, 1, 2])[2])


def test_a_diverging_expert_names_itself_and_the_lr(crc, tmp_path):
    with pytest.raises(UserError, match=r"^expert 0 training loss became (nan|inf|-inf) \(lower --lr, now inf\)$"):
        train_experts(crc, tmp_path / "store", small(lr=float("inf"), num_experts=1), progress=False,
                      log=lambda m: None)


def test_seeded_network_lives_in_models_and_leaves_the_global_rng_alone():
    from mtt_fast.experts import seeded_network as from_experts
    from mtt_fast.experts.train import seeded_network as from_train

    assert from_experts is seeded_network and from_train is seeded_network
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    a = seeded_network("convnet", 1, 3, 16, width=4, depth=1, seed=5)
    assert torch.equal(torch.rand(3), want)
    b = seeded_network("convnet", 1, 3, 16, width=4, depth=1, seed=5)
    c = seeded_network("convnet", 1, 3, 16, width=4, depth=1, seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
