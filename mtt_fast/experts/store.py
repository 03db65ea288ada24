"""The expert trajectory store: ``meta.json`` + one safetensors shard per expert.

Layout of a store directory::

    meta.json                 dataset, arch, resolution, classes, normalization, parameter
                              names/shapes, training settings, and the finished experts
    expert_000.safetensors    "trajectory": float32 [1, epochs + 1, P] (snapshot 0 = init)
    expert_001.safetensors    ...

A shard is written (atomically) only when its expert has finished, with the expert's record
(seed, losses, validation scores) in its safetensors metadata; then ``meta.json`` is rewritten
to list the finished experts 0, 1, ... in order. A killed ``buffer`` run resumes with the
experts that have no shard yet (a shard written just before the kill is adopted from its own
record), which is also what lets several ranks train experts at once (one writer per shard).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import json

import torch
from safetensors import safe_open

from mtt_fast.errors import UserError
from mtt_fast.io import read_json, save_tensors, write_json
from mtt_fast.models import FlatParams, get_network

STORE_FORMAT = "mtt-fast/trajectories"
STORE_VERSION = 1


def shard_name(k: int) -> str:
    return f"expert_{k:03d}.safetensors"


@dataclass
class TrajectoryStore:
    """Read access to a finished (or partly finished) store.

    Attributes:
        path: the store directory.
        meta: the parsed ``meta.json``.
    """

    path: Path
    meta: dict

    @classmethod
    def open(cls, path: str | Path) -> TrajectoryStore:
        """Open a store, checking it is one and that its shards exist."""
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"--buffer {path}: no such directory")
        meta = read_json(path / "meta.json", what="trajectory store metadata")
        if meta.get("format") != STORE_FORMAT:
            raise UserError(f"--buffer {path}: meta.json is not an mtt-fast trajectory store")
        if not meta.get("experts"):
            raise UserError(f"--buffer {path}: the store has no finished expert yet (run `mtt-fast buffer` to finish it)")
        store = cls(path, meta)
        for e in meta["experts"]:
            store._check_shard(path / e["file"])
        return store

    def _check_shard(self, f: Path) -> None:
        """Every listed shard is a safetensors file holding ``trajectory`` float32 ``[1, epochs + 1, P]``
        (read from its header only; a truncated or pickled file fails here, naming it)."""
        if not f.is_file():
            raise UserError(f"--buffer {self.path}: shard {f.name} listed in meta.json is missing")
        want = [1, self.epochs + 1, self.layout.size]
        try:
            with safe_open(str(f), framework="pt") as h:
                if "trajectory" not in h.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                    raise UserError(f"shard {f} holds no 'trajectory' tensor; rerun `mtt-fast buffer` for this store")
                sl = h.get_slice("trajectory")
                shape, dtype = list(sl.get_shape()), sl.get_dtype()
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a bad header
            raise UserError(f"shard {f} is corrupt or not a safetensors file ({e}); rerun `mtt-fast buffer` "
                            f"into a new --out, or delete it and its entry in meta.json") from None
        if shape != want or dtype not in ("F32", "float32"):
            raise UserError(f"shard {f} holds a {dtype} tensor of shape {shape}; meta.json expects float32 {want}")
        with open(f, "rb") as fh:  # the header parsed; now the data must all be there
            header_len = int.from_bytes(fh.read(8), "little")
        if f.stat().st_size < 8 + header_len + 4 * want[1] * want[2]:
            raise UserError(f"shard {f} is truncated ({f.stat().st_size} bytes); rerun `mtt-fast buffer` into a new "
                            f"--out, or delete it and its entry in meta.json")

    @property
    def layout(self) -> FlatParams:
        return FlatParams.from_json(self.meta["params"])

    @property
    def num_experts(self) -> int:
        return len(self.meta["experts"])

    @property
    def epochs(self) -> int:
        """Training epochs per expert (each trajectory holds ``epochs + 1`` snapshots)."""
        return int(self.meta["training"]["epochs"])

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    @property
    def dataset_meta(self) -> dict:
        return self.meta["dataset"]

    @property
    def expert_lr(self) -> float:
        return float(self.meta["training"]["lr"])

    def build_network(self, block_impl: str = "auto") -> torch.nn.Module:
        """A fresh instance of the architecture the experts were trained with.

        ``block_impl``: the ConvNet's instance-norm/ReLU/pool blocks (``auto``: the fused
        compiled op where it is built for the input's device and dtype; ``fused``; ``reference``).
        """
        m = self.meta
        net = get_network(m["arch"], m["channels"], len(m["classes"]), m["res"], width=m["width"], depth=m["depth"],
                          block_impl=block_impl)
        if FlatParams.of(net) != self.layout:
            raise UserError(f"--buffer {self.path}: its parameter layout does not match the network {m['arch']} builds here")
        return net

    def snapshots(self, expert: int, epochs: list[int]) -> list[torch.Tensor]:
        """Flat parameters ``[P]`` of ``expert`` after each epoch in ``epochs`` (0 = init)."""
        f = self.path / self.meta["experts"][expert]["file"]
        try:
            with safe_open(str(f), framework="pt") as h:
                sl = h.get_slice("trajectory")
                shape = sl.get_shape()
                if shape[1] != self.epochs + 1 or shape[2] != self.layout.size:
                    raise UserError(f"shard {f} has shape {shape}, meta.json expects [1, {self.epochs + 1}, {self.layout.size}]")
                return [sl[0:1, e : e + 1, :].reshape(-1).clone() for e in epochs]
        except (OSError, ValueError, RuntimeError) as e:
            raise UserError(f"shard {f} is corrupt: {e}") from None

    def trajectory(self, expert: int) -> torch.Tensor:
        """The whole trajectory ``[epochs + 1, P]`` of one expert."""
        return torch.stack(self.snapshots(expert, list(range(self.epochs + 1))))

    def check_epochs(self, expert_epochs: int, max_start_epoch: int) -> None:
        """Fail clearly unless every start epoch < T+ has a target ``expert_epochs`` later."""
        if expert_epochs < 1:
            raise UserError(f"--expert-epochs must be at least 1 (got {expert_epochs})")
        if max_start_epoch < 1:
            raise UserError(f"--max-start-epoch must be at least 1 (got {max_start_epoch})")
        if max_start_epoch - 1 + expert_epochs > self.epochs:
            raise UserError(
                f"--expert-epochs {expert_epochs} + --max-start-epoch {max_start_epoch} need "
                f"{max_start_epoch - 1 + expert_epochs} epochs, but the store {self.path} has {self.epochs}"
            )


def write_shard(store_dir: Path, k: int, trajectory: torch.Tensor, record: dict) -> dict:
    """Write expert ``k``'s trajectory ``[E+1, P]`` with its record; returns the ``meta.json`` entry."""
    entry = {"file": shard_name(k), **record}
    save_tensors(store_dir / shard_name(k), {"trajectory": trajectory.unsqueeze(0).float()},
                 metadata={"expert": json.dumps(entry)})
    return entry


def shard_record(store_dir: Path, k: int, epochs: int, size: int) -> dict | None:
    """The ``meta.json`` entry of expert ``k`` from its finished shard, or None (no shard, an
    older shard without a record, or one that does not hold ``[1, epochs + 1, size]``)."""
    f = store_dir / shard_name(k)
    if not f.is_file():
        return None
    try:
        with safe_open(str(f), framework="pt") as h:
            meta = h.metadata() or {}
            shape = list(h.get_slice("trajectory").get_shape())
        entry = json.loads(meta["expert"])
    except Exception:  # noqa: BLE001 - anything unreadable is simply trained again
        return None
    if shape != [1, epochs + 1, size] or entry.get("file") != shard_name(k):
        return None
    with open(f, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
    if f.stat().st_size < 8 + header_len + 4 * (epochs + 1) * size:
        return None
    return entry


def list_finished(store_dir: Path, meta: dict, records: dict[int, dict], *, write: bool = True) -> None:
    """List the longest run of finished experts 0, 1, ... in ``meta`` and (``write``) in
    ``meta.json`` (rewritten atomically)."""
    meta["experts"] = []
    while len(meta["experts"]) in records:
        meta["experts"].append(records[len(meta["experts"])])
    if write:
        write_json(store_dir / "meta.json", meta)
