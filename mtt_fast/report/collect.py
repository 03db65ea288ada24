"""Find and load what ``mtt-fast report`` reports on: distill runs, evaluations, sweeps.

A RUN_DIR is recognized by the files the other commands write into it:

* a distill run: ``config.yaml`` with ``command: distill`` (``metrics.jsonl``, ``summary.json``,
  ``synset/``; the random-real baseline has only ``synset/``), see :mod:`mtt_fast.distill`; or a
  copy of one's results without its ``config.yaml`` (``synset/``, perhaps ``summary.json``: what a
  study keeps of a finished run), whose options are then read from the synset's ``meta["distill"]``;
* an evaluation: ``results.json`` as written by :func:`mtt_fast.evaluate.run.write_results`
  (an ``eval`` directory without it is still running and is noted, not read);
* a sweep: ``summary.json`` holding ``{"metric", "keys", "rows"}``;
* anything else is a container, searched one or two levels down (a sweep's own run
  directories are not searched: the sweep table is their report).

Evaluations inside a distill run (``<run>/eval/``, ``<run>/eval_cross/``) are picked up with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from mtt_fast.errors import UserError
from mtt_fast.io import load_tensors, read_json, read_jsonl, read_yaml

METHOD_ORDER = ["random", "dd", "mtt", "glad"]
METHOD_LABELS = {"random": "Random real", "dd": "DD", "mtt": "MTT", "glad": "GLaD", "herding": "Herding",
                 "kcenter": "k-center"}


#: the distill options (off: absent, None, or the default) that make a variant of a method: the
#: ideas of MTT's successors. ``(option, key in the method string, display name)``
VARIANT_OPTIONS = (("soft_labels", "learned-labels", "learned labels"),
                   ("start_epoch_schedule", "range", "widening range"), ("skip_loss_above", "skip", "loss skipping"),
                   ("ema_images", "ema", "EMA images"), ("match_layers", "layers", "layers"))
_VARIANT_OFF = {"match_layers": "all"}
#: methods that take the experts' soft labels as they are (the controls): for them ``soft_labels`` is no
#: variant (their evaluations show "(soft)"); the distillation methods learn the labels (DATM)
_FIXED_LABEL_METHODS = ("random", "herding", "kcenter")


def method_variant(method: str, settings: dict | None) -> str:
    """``method`` with the ideas its distillation turned on, from its settings (a distill run's
    config.yaml, or a synset's ``meta["distill"]``): ``"mtt"``, ``"mtt+ema"``,
    ``"mtt+range+skip+ema+layers=deep:0.5"``, ``"mtt+learned-labels"`` (DATM's learned soft labels; the
    controls' fixed soft labels are no variant). Runs of one method with different ideas are then
    separate rows and columns of the report, never one entry picked among them."""
    settings = settings if isinstance(settings, dict) else {}
    on = []
    for option, key, _ in VARIANT_OPTIONS:
        if option == "soft_labels" and method.lower() in _FIXED_LABEL_METHODS:
            continue
        v = settings.get(option)
        if v is None or v is False or v == _VARIANT_OFF.get(option):
            continue
        on.append(f"{key}={v}" if key == "layers" else key)
    return "+".join([method, *on])


def method_label(method: str | None, labels: str | None = None) -> str:
    """The display name of a method (``method_variant``'s ideas after it: ``MTT + EMA images``);
    ``" (soft)"`` appended when its networks trained on soft labels."""
    base, *ideas = str(method).split("+")
    names = {key: name for _, key, name in VARIANT_OPTIONS}
    parts = [METHOD_LABELS.get(base.lower(), base)]
    for idea in ideas:
        key, _, value = idea.partition("=")
        parts.append(f"{names.get(key, key)} {value}".strip())
    name = " + ".join(parts)
    return f"{name} (soft)" if label_kind(labels) == "soft" else name


def label_kind(labels: str | None) -> str:
    """``"soft"`` for a recorded ``labels`` of ``"soft"``, else ``"hard"`` (unrecorded: results
    written before soft labels existed are hard)."""
    return "soft" if labels == "soft" else "hard"


def labels_rank(labels: str | None) -> int:
    """Sort key of the label kind: hard (or unrecorded) before soft."""
    return 1 if label_kind(labels) == "soft" else 0


def method_rank(method: str | None) -> tuple[int, str]:
    """Sort key: the paper's methods in its order (each before its variants), then the others."""
    m = str(method).lower()
    base = m.split("+")[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), m)


def ipc_key(ipc) -> tuple:
    """Sort key for images per class: numbers in order, a missing one last."""
    return (ipc is None, ipc if isinstance(ipc, (int, float)) else 0)


@dataclass
class SynsetInfo:
    """What the report needs of a synset directory (no pixels are loaded)."""

    path: Path
    meta: dict
    counts: list[int] | None  # images per class in the synset
    grid: Path | None

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])


@dataclass
class EvalRun:
    """One ``results.json`` (see :func:`mtt_fast.evaluate.run.evaluate_synset`)."""

    path: Path
    name: str
    results: dict
    synset: SynsetInfo | None = None

    @property
    def method(self) -> str:
        """The synset's method with the ideas its distillation used (:func:`method_variant`; from the
        synset's meta, or from ``results.json`` where the synset is not found)."""
        meta = self.synset.meta if self.synset else {}
        return method_variant(str(self.results.get("method") or meta.get("method") or "?"),
                              meta.get("distill") or self.results.get("distill"))

    @property
    def ipc(self):
        return self.results.get("ipc", self.synset.meta.get("ipc") if self.synset else None)

    @property
    def dataset(self) -> str:
        return str(self.results.get("dataset", "?"))

    @property
    def labels(self) -> str:
        """``"soft"`` when the networks trained on the synset's soft labels, else ``"hard"``
        (results written before soft labels existed are hard)."""
        return label_kind(self.results.get("labels"))

    @property
    def metric(self) -> str:
        from mtt_fast.evaluate.metrics import headline_metric

        return self.results.get("metric") or headline_metric(len(self.results.get("classes") or [0, 0, 0]))

    @property
    def backbone(self) -> str | None:
        """The architecture the synset was distilled with (ConvNet unless recorded otherwise)."""
        archs = list(self.results.get("results", {}))
        arch = (self.synset.meta.get("arch") if self.synset else None) or "convnet"
        if arch in archs:
            return arch
        return None


@dataclass
class DistillRun:
    """One distill run directory (the random-real baseline included)."""

    path: Path
    name: str
    config: dict
    metrics: list[dict]
    summary: dict | None
    synset: SynsetInfo | None
    evals: list[EvalRun] = field(default_factory=list)

    @property
    def method(self) -> str:
        """The run's method with the ideas it used (:func:`method_variant`)."""
        meta = self.synset.meta if self.synset else {}
        return method_variant(str(self.config.get("method") or meta.get("method") or "?"),
                              self.config or meta.get("distill"))

    @property
    def ipc(self):
        return self.config.get("ipc", self.synset.meta.get("ipc") if self.synset else None)

    @property
    def dataset(self) -> str:
        return str(((self.synset.meta if self.synset else {}).get("dataset") or {}).get("name", "?"))


@dataclass
class Sweep:
    """A sweep directory's ``summary.json``."""

    path: Path
    name: str
    summary: dict


@dataclass
class Collection:
    """Everything found under the RUN_DIRs, plus notes on what was skipped and why."""

    distills: list[DistillRun] = field(default_factory=list)
    evals: list[EvalRun] = field(default_factory=list)
    sweeps: list[Sweep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # the RUN_DIRs given, resolved

    def all_evals(self) -> list[EvalRun]:
        """Standalone evaluations and those inside distill runs, each once."""
        seen, out = set(), []
        for e in [*(e for d in self.distills for e in d.evals), *self.evals]:
            key = e.path.resolve()
            if key not in seen:
                seen.add(key)
                out.append(e)
        return out


# ------------------------------------------------------------------------------------------
# recognizing directories


def _config(path: Path) -> dict:
    f = path / "config.yaml"
    if not f.is_file():
        return {}
    try:
        c = read_yaml(f)
    except UserError:
        return {}
    return c if isinstance(c, dict) else {}


def _json_or_none(f: Path):
    if not f.is_file():
        return None
    try:
        return read_json(f)
    except UserError:
        return None


def kind_of(path: Path) -> str | None:
    """``"distill"``, ``"eval"``, ``"eval-running"``, ``"sweep"``, ``"store"``, or None."""
    cfg = _config(path)
    cmd = cfg.get("command")
    if cmd == "distill":
        return "distill"
    res = _json_or_none(path / "results.json")
    if isinstance(res, dict) and isinstance(res.get("results"), dict):
        return "eval"
    if cmd == "eval":
        return "eval-running"
    summ = _json_or_none(path / "summary.json")
    if isinstance(summ, dict) and isinstance(summ.get("rows"), list) and "keys" in summ:
        return "sweep"
    if cmd == "buffer" or (path / "meta.json").is_file() and (path / "expert_000.safetensors").is_file():
        return "store"
    if not cfg and synset_dir(path / "synset") is not None:
        return "distill"  # a distill run's results kept without its config.yaml
    return None


def running_eval_note(path: Path) -> str:
    """The report's note for an evaluation still running (or killed): how many of its networks are saved.

    ``eval`` saves each trained network under ``networks/`` as it finishes (a rerun resumes from
    them); the total is what its config.yaml asks for: per architecture ``--repeats`` networks, and
    with ``--lr-grid`` one selection network per candidate rate, the chosen one counting as repeat 0.
    A grid naming the default rate (``none``) may coincide with another entry, so no total is given.
    """
    cfg = _config(path)
    folder = path / "networks"
    saved = len(list(folder.glob("*.json"))) if folder.is_dir() else 0
    archs, repeats, grid = cfg.get("archs"), cfg.get("repeats"), cfg.get("lr_grid") or []
    total = None
    if isinstance(archs, list) and archs and isinstance(repeats, int) and repeats > 0 and None not in grid:
        total = len(archs) * (repeats + len(set(grid)) - 1 if grid else repeats)
    count = f"{saved} of {total}" if total is not None else f"{saved}"
    return (f"{path}: evaluation still running or stopped ({count} networks saved, no results.json yet; "
            f"the same `mtt-fast eval` command resumes it); left out")


def synset_dir(path: Path) -> Path | None:
    """The synset directory of ``path`` (itself, or ``path/synset``), or None."""
    for p in (path / "synset", path):
        if (p / "meta.json").is_file() and (p / "synset.safetensors").is_file():
            return p
    return None


def load_synset_info(path: Path | None) -> SynsetInfo | None:
    """Read a synset's meta.json and its labels (for the class counts); None if absent."""
    d = synset_dir(path) if path is not None else None
    if d is None:
        return None
    meta = _json_or_none(d / "meta.json")
    if not isinstance(meta, dict):
        return None
    counts = None
    try:
        labels = load_tensors(d / "synset.safetensors", what="synset")["labels"]
        k = len(meta.get("classes") or []) or int(labels.max()) + 1
        counts = [int((labels == c).sum()) for c in range(k)]
    except (UserError, KeyError, RuntimeError):
        pass
    grid = d / "grid.png"
    return SynsetInfo(d, meta, counts, grid if grid.is_file() else None)


def _name(path: Path, root: Path) -> str:
    try:
        rel = path.resolve().relative_to(root.resolve().parent)
    except ValueError:
        rel = Path(path.name)
    return str(rel)


def load_eval(path: Path, name: str, synset: SynsetInfo | None = None) -> EvalRun:
    res = read_json(path / "results.json", what="evaluation results")
    if synset is None:
        src = _config(path).get("synset")
        if src:
            synset = load_synset_info(Path(src))
    return EvalRun(path, name, res, synset)


def load_distill(path: Path, name: str, notes: list[str]) -> DistillRun:
    cfg = _config(path)
    metrics = read_jsonl(path / "metrics.jsonl")
    summary = _json_or_none(path / "summary.json")
    syn = load_synset_info(path)
    if syn is None:
        notes.append(f"{path}: no synset yet (the run has not reached its first evaluation)")
    run = DistillRun(path, name, cfg, metrics, summary if isinstance(summary, dict) else None, syn)
    subs = sorted(p for p in path.iterdir() if p.is_dir())
    # one level deeper too: e.g. <run>/eval_cross/<arch>/ (one evaluation per architecture)
    subs += [q for p in subs if kind_of(p) is None for q in sorted(x for x in p.iterdir() if x.is_dir())]
    for sub in subs:
        k = kind_of(sub)
        if k == "eval":
            run.evals.append(load_eval(sub, f"{name}/{sub.relative_to(path)}", syn))
        elif k == "eval-running":
            notes.append(running_eval_note(sub))
    return run


def _add(path: Path, root: Path, kind: str, col: Collection) -> None:
    name = _name(path, root)
    if kind == "distill":
        col.distills.append(load_distill(path, name, col.notes))
    elif kind == "eval":
        col.evals.append(load_eval(path, name))
    elif kind == "eval-running":
        col.notes.append(running_eval_note(path))
    elif kind == "sweep":
        col.sweeps.append(Sweep(path, name, read_json(path / "summary.json", what="sweep summary")))


def collect(paths: list[str | Path]) -> Collection:
    """Load every run under ``paths``.

    Raises:
        UserError: a path does not exist, or holds no run at its level or 1-2 levels below.
    """
    col = Collection(sources=[str(Path(p).resolve()) for p in paths])
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"RUN_DIR {p}: no such directory")
        found = 0
        queue = [(p, 0)]
        while queue:
            d, depth = queue.pop(0)
            kind = kind_of(d)
            if kind in ("distill", "eval", "eval-running", "sweep"):
                if d.resolve() not in seen:
                    seen.add(d.resolve())
                    _add(d, p, kind, col)
                found += 1
            elif kind == "store":
                continue
            elif depth < 2:
                queue += [(c, depth + 1) for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
        if not found:
            raise UserError(f"RUN_DIR {p}: not a distill run, eval or sweep directory, and none was found one or "
                            f"two levels below it")
    # an eval given on its own that lives inside a given distill run belongs to that run
    inside = {e.path.resolve() for d in col.distills for e in d.evals}
    col.evals = [e for e in col.evals if e.path.resolve() not in inside]
    return col


def finite(x) -> float | None:
    """``x`` as a float, or None for missing / NaN / inf (JSON has no NaN)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
