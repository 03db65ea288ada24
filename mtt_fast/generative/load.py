"""Loading a generator from a ``--generator`` spec, without unpickling anything.

A spec is one of

* a ``gan train`` output directory, or its ``generator.json`` / ``generator.safetensors``:
  the module is rebuilt from the JSON config (:meth:`Generator.from_config`) and the
  safetensors weights;
* a TorchScript file (``torch.jit.save`` of a module following
  :mod:`mtt_fast.synth.generator`): ``torch.jit.load``;
* ``package.module:factory``: the module is imported and ``factory()`` called with no
  arguments; it returns the ``nn.Module``.

Every failure is ONE :class:`~mtt_fast.errors.UserError` line naming the spec.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
import zipfile
from pathlib import Path

import torch
from torch import nn

from mtt_fast.errors import UserError
from mtt_fast.generative.networks import Generator
from mtt_fast.synth.generator import check_generator

GENERATOR_FORMAT = "mtt-fast/generator"
_FACTORY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _load_mtt_fast(spec: str, json_path: Path, device) -> tuple[nn.Module, dict]:
    from mtt_fast.io import load_tensors

    try:
        doc = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--generator {spec}: {json_path} is not valid JSON ({_first_line(e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != GENERATOR_FORMAT or not isinstance(doc.get("config"), dict):
        raise UserError(f"--generator {spec}: {json_path} is not an mtt-fast generator description")
    wpath = json_path.parent / str(doc.get("weights", "generator.safetensors"))
    if not wpath.is_file():
        raise UserError(f"--generator {spec}: the weights {wpath} are missing")
    sha = sha256_file(wpath)
    if doc.get("weights_sha256") and doc["weights_sha256"] != sha:
        raise UserError(f"--generator {spec}: {wpath.name} does not match {json_path.name} (an interrupted write? "
                        "rerun `mtt-fast gan train` to finish the run)")
    try:
        G = Generator.from_config(doc["config"])
    except (UserError, TypeError, ValueError) as e:
        raise UserError(f"--generator {spec}: {json_path} holds a bad generator config ({_first_line(e)})") from None
    tensors = load_tensors(wpath, what=f"--generator {spec}: weights")
    try:
        G.load_state_dict(tensors)
    except RuntimeError as e:
        raise UserError(f"--generator {spec}: {wpath.name} does not fit the config in {json_path.name} "
                        f"({_first_line(e)})") from None
    ref = {"kind": "mtt-fast", "spec": spec, "path": str(json_path.resolve()), "weights": str(wpath.resolve()),
           "sha256": sha, "step": doc.get("step"), "dataset": doc.get("dataset"),
           "normalization": doc.get("normalization"), "classes": doc.get("classes")}
    return G.to(device), ref


def _load_torchscript(spec: str, path: Path, device) -> tuple[nn.Module, dict]:
    if not zipfile.is_zipfile(path):
        raise UserError(f"--generator {spec}: {path} is not a TorchScript archive (nor an mtt-fast generator)")
    try:
        g = torch.jit.load(str(path), map_location=device)
    except Exception as e:  # noqa: BLE001 - a foreign file: any failure is one clear line
        raise UserError(f"--generator {spec}: {path} is not a loadable TorchScript archive ({_first_line(e)})") from None
    return g, {"kind": "torchscript", "spec": spec, "path": str(path.resolve()), "sha256": sha256_file(path)}


def _load_factory(spec: str, device) -> tuple[nn.Module, dict]:
    modname, fname = spec.split(":")
    try:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError:
            # the console script does not put the working directory on sys.path; a user does expect it
            if os.getcwd() in sys.path:
                raise
            sys.path.insert(0, os.getcwd())
            try:
                mod = importlib.import_module(modname)
            finally:
                sys.path.remove(os.getcwd())
    except Exception as e:  # noqa: BLE001 - import of user code: any failure is one line
        raise UserError(f"--generator {spec}: cannot import module {modname} ({_first_line(e)})") from None
    factory = getattr(mod, fname, None)
    if not callable(factory):
        raise UserError(f"--generator {spec}: module {modname} has no callable {fname}")
    try:
        g = factory()
    except Exception as e:  # noqa: BLE001 - user code
        raise UserError(f"--generator {spec}: {fname}() raised {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(g, nn.Module):
        raise UserError(f"--generator {spec}: {fname}() returned {type(g).__name__}, not a torch.nn.Module")
    return g.to(device), {"kind": "factory", "spec": spec}


def load_generator(spec: str, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Load and validate the generator named by ``spec`` (see the module docstring).

    Returns:
        ``(module, reference)``: the module in eval mode with ``requires_grad`` off, on
        ``device``; the JSON-able reference ``{"kind": "mtt-fast" | "torchscript" |
        "factory", "spec", "path" and "sha256" (files), ..., plus the interface attributes
        and "feature_shapes" of :func:`check_generator`}``.

    Raises:
        UserError: one line naming ``spec``: missing path, corrupt weights, bad JSON, not a
            TorchScript archive, module not importable, factory missing or raising, or a
            module that does not follow the interface.
    """
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir():
            if not (path / "generator.json").is_file():
                raise UserError(f"--generator {spec}: the directory has no generator.json (is it a finished "
                                "`mtt-fast gan train` run?)")
            g, ref = _load_mtt_fast(spec, path / "generator.json", device)
        elif path.name == "generator.safetensors" or path.suffix == ".json":
            g, ref = _load_mtt_fast(spec, path.with_name("generator.json") if path.suffix != ".json" else path, device)
        else:
            g, ref = _load_torchscript(spec, path, device)
    elif _FACTORY.match(spec):
        g, ref = _load_factory(spec, device)
    else:
        raise UserError(f"--generator {spec}: no such file or directory (nor a package.module:factory)")
    g.eval()
    for p in g.parameters():
        p.requires_grad_(False)
    info = check_generator(g, spec, device=device)
    return g, {**ref, **info}
