"""Issue 18's distill-side arithmetic: the start-epoch schedule, memory sizes, the layer mask, the
coreset selections on hand-made features, and the recipe presets' scaling."""

from __future__ import annotations

import pytest
import torch

from mtt_fast.distill.coreset import herding, kcenter
from mtt_fast.distill.options import StartSchedule, layer_groups, layer_mask, parse_bytes
from mtt_fast.errors import UserError
from mtt_fast.models import FlatParams, get_network
from mtt_fast.stages.sweep import recipe_points


def test_start_epoch_schedule_grows_linearly_then_stays():
    s = StartSchedule.parse("10:20:1000")
    assert [s.upper(i) for i in (0, 1, 99, 100, 500, 999, 1000, 5000)] == [10, 10, 10, 11, 15, 19, 20, 20]
    assert str(s) == "10:20:1000"
    flat = StartSchedule.parse("3:3:5")
    assert {flat.upper(i) for i in range(20)} == {3}
    for bad in ("10:20", "0:5:10", "5:4:10", "1:2:0", "a:b:c"):
        with pytest.raises(UserError, match="--start-epoch-schedule"):
            StartSchedule.parse(bad)


def test_parse_bytes():
    assert parse_bytes("8GiB") == 8 * 2**30 and parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5GB") == 1_500_000_000 and parse_bytes("1000") == 1000 and parse_bytes(None) is None
    for bad in ("8 parsecs", "-1GiB", "0", "GiB"):
        with pytest.raises(UserError, match="--memory-budget"):
            parse_bytes(bad)


def test_layer_mask_from_the_flat_layout():
    net = get_network("convnet", 1, 10, 16, width=4, depth=2)
    layout = FlatParams.of(net)
    # ConvNet-D2: (conv weight, conv bias, norm weight, norm bias) x 2, classifier weight + bias
    groups = layer_groups(layout)
    assert [[layout.names[i] for i in g] for g in groups][-1] == ["classifier.weight", "classifier.bias"]
    assert layer_mask(layout, "all") is None and layer_mask(layout, ":") is None
    offsets = [0]
    for k in layout.numels:
        offsets.append(offsets[-1] + k)
    m = layer_mask(layout, "2:")
    assert m.shape == (layout.size,) and m.dtype == torch.bool
    assert not m[: offsets[2]].any() and m[offsets[2]:].all()
    m = layer_mask(layout, "-2:")  # the classifier only
    assert int(m.sum()) == layout.numels[-1] + layout.numels[-2] and m[-1] and m[offsets[-3]] and not m[offsets[-3] - 1]
    deep = layer_mask(layout, "deep:0.5")  # the deepest ceil(0.5 * L) layers
    keep = groups[len(groups) - -(-len(groups) // 2):]
    want = torch.zeros(layout.size, dtype=torch.bool)
    for g in keep:
        for i in g:
            want[offsets[i]:offsets[i + 1]] = True
    assert torch.equal(deep, want) and 0 < int(deep.sum()) < layout.size
    assert torch.equal(layer_mask(layout, "deep:0.01"), layer_mask(layout, f"{groups[-1][0]}:"))
    for bad in ("deep:0", "deep:2", "shallow", "5:2", "1:2:3"):
        with pytest.raises(UserError, match="--match-layers"):
            layer_mask(layout, bad)


def test_herding_on_a_hand_made_feature_set():
    # mean (1, 0); step 1 takes the point nearest the mean, step 2 the one that brings the mean of
    # the two back onto it, step 3 the next best
    f = torch.tensor([[5.0, 0.0], [1.0, 0.2], [3.0, 2.0], [-1.0, -2.0], [-3.0, -0.2]])
    assert torch.allclose(f.mean(0), torch.tensor([1.0, 0.0]))
    assert herding(f, 1) == [1]
    assert herding(f, 3) == [1, 3, 2]  # (1,.2)+(-1,-2) -> mean (0,-.9); + (3,2) -> (1, .067)
    assert sorted(herding(f, 5)) == [0, 1, 2, 3, 4]


def test_kcenter_on_a_hand_made_feature_set():
    # a cluster near the origin and two far points; the mean is (1.69, -0.975): the nearest point to
    # it is (0.1, 0) [squared distance 3.48; (0.05, 0.05): 3.74], then the farthest from the chosen
    # ones is (10, 0) [98 vs (0, -6): 36], then (0, -6) [36 vs at most 0.02 for the cluster]
    f = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [10.0, 0.0], [0.0, -6.0], [0.05, 0.05]])
    assert kcenter(f, 1) == [1]
    assert kcenter(f, 3) == [1, 3, 4]
    assert sorted(kcenter(f, 6)) == [0, 1, 2, 3, 4, 5]
    dup = torch.tensor([[0.0], [0.0], [1.0]])  # duplicates are still distinct picks
    assert sorted(kcenter(dup, 3)) == [0, 1, 2]


def test_recipe_points_scale_to_the_store_and_the_iterations():
    pts = recipe_points("datm", {}, store_epochs=None)
    assert [p["ipc"] for p in pts] == [1, 10] and pts[1]["start_epoch_schedule"] == "10:20:1000"
    assert pts[0]["lr_y"] == 5.0 and pts[1]["skip_loss_above"] == 1.0
    (p,) = recipe_points("datm", {"ipc": 10, "iterations": 500, "lr_y": 3.0}, store_epochs=12)
    # 12 epochs, M 2: HI 20 -> round(20 * 12 / 50) = 5, LO 10 -> 2; ITERS 1000 * 500 / 10000 = 50
    assert p["start_epoch_schedule"] == "2:5:50" and "lr_y" not in p
    (p,) = recipe_points("pad", {"ipc": 50}, store_epochs=3)  # ipc 50 -> the ipc 10 point
    # 3 epochs, M 2: HI round(20 * 3 / 50) = 1 (at most 3 - 2 + 1 = 2), LO at least 1
    assert p["match_layers"] == "deep:0.5" and p["start_epoch_schedule"] == "1:1:1000"
    (p,) = recipe_points("ftd", {"ipc": 1}, store_epochs=None)
    assert p["max_start_epoch"] == 2 and p["syn_steps"] == 50
