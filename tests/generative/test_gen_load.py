"""load_generator: mtt-fast directories, TorchScript files, factories, and clear failures."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from mtt_fast.errors import UserError
from mtt_fast.generative import Generator, load_generator
from mtt_fast.io import save_tensors, write_json


def tiny() -> Generator:
    torch.manual_seed(1)
    return Generator(3, 1, 16, z_dim=8, w_dim=16, channel_base=128, channel_max=16)


def _write_dir(tmp_path, g: Generator):
    from mtt_fast.generative.load import sha256_file

    d = tmp_path / "gan"
    d.mkdir()
    save_tensors(d / "generator.safetensors", dict(g.state_dict()))
    write_json(d / "generator.json", {"format": "mtt-fast/generator", "config": g.to_config(), "step": 7,
                                      "weights_sha256": sha256_file(d / "generator.safetensors")})
    return d


def test_load_mtt_fast_dir_and_files(tmp_path):
    g = tiny()
    d = _write_dir(tmp_path, g)
    ws = torch.randn(2, g.num_ws, g.w_dim)
    for spec in (d, d / "generator.json", d / "generator.safetensors"):
        h, ref = load_generator(str(spec), device="cpu")
        assert ref["kind"] == "mtt-fast" and ref["step"] == 7 and len(ref["sha256"]) == 64
        assert ref["num_ws"] == g.num_ws and ref["feature_shapes"]
        assert not h.training and not any(p.requires_grad for p in h.parameters())
        assert torch.equal(h.render(None, ws, -1), g.render(None, ws, -1))
        json.dumps(ref)


def test_load_mtt_fast_failures(tmp_path):
    g = tiny()
    d = _write_dir(tmp_path, g)
    (d / "generator.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(UserError, match="does not match"):
        load_generator(str(d))
    doc = json.loads((d / "generator.json").read_text())
    doc.pop("weights_sha256")
    (d / "generator.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=f"--generator {d}:.*corrupt"):
        load_generator(str(d))
    (d / "generator.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_generator(str(d))
    (d / "generator.json").unlink()
    with pytest.raises(UserError, match="no generator.json"):
        load_generator(str(d))
    with pytest.raises(UserError, match="no such file"):
        load_generator(str(tmp_path / "missing"))


def test_load_torchscript(tmp_path):
    g = tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        s = torch.jit.script(g)
    path = tmp_path / "g.pt"
    s.save(str(path))
    h, ref = load_generator(str(path), device="cpu")
    assert ref["kind"] == "torchscript" and ref["path"] == str(path.resolve()) and len(ref["sha256"]) == 64
    ws = torch.randn(2, g.num_ws, g.w_dim)
    assert torch.allclose(h.render(None, ws, -1), g.render(None, ws, -1), atol=1e-6)
    assert not any(p.requires_grad for p in h.parameters())


def test_garbage_file_is_one_user_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04not a torchscript archive")
    with pytest.raises(UserError) as e:
        load_generator(str(bad))
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_factory():
    g, ref = load_generator("tests.generative.factory_gen:make")
    assert not g.training
    assert ref["kind"] == "factory" and ref["spec"] == "tests.generative.factory_gen:make"
    assert ref["num_classes"] == 3 and ref["img_resolution"] == 16


@pytest.mark.parametrize("spec,msg", [
    ("tests.generative.factory_gen:make_no_render", "render"),
    ("tests.generative.factory_gen:make_raises", "factory exploded"),
    ("tests.generative.factory_gen:make_not_module", "not a torch.nn.Module"),
    ("tests.generative.factory_gen:nothing_here", "no callable"),
    ("tests.generative.no_such_module:make", "cannot import"),
])
def test_factory_failures(spec, msg):
    with pytest.raises(UserError, match=msg) as e:
        load_generator(spec)
    assert f"--generator {spec}" in str(e.value)
