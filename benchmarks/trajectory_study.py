"""Issue 18's study: plain MTT against the 2023-2025 trajectory-matching ideas, with honest controls.

    python benchmarks/trajectory_study.py --out /tmp/traj_study --jobs 2          # the study
    python benchmarks/trajectory_study.py --out /tmp/traj_quick --quick --jobs 2  # a tiny smoke run
    python benchmarks/trajectory_study.py --out /tmp/traj_study --report-only     # table only

Fashion-MNIST at 28 px (so VGG11's five max-pools fit), ConvNet-D3 experts, ipc 1 and 10. Rows:
random, herding and k-center real images, each with hard labels and with the experts' soft labels
(``--soft-labels``, not optimized: the controls); MTT; MTT plus each idea alone (DATM's learned soft
labels, DATM's widening start-epoch range, DATM's loss skipping, FTD's EMA images, PAD's deep-layer
matching); MTT plus all of them. FTD's sharpness-aware experts need ``buffer --sam-rho``: with
``--sam-rho R`` the study also trains such a store and adds "MTT + SAM experts" (the "all" row then
uses it too); without it they are left out. Columns: test accuracy (mean ± std over ``--repeats``
networks trained from scratch) on ConvNet (the backbone, at the synset's learned rate or 0.01),
AlexNet, VGG11, ResNet18 (each synset's starting rate chosen on the validation split among
``_meta.UNSEEN_LR_GRID``: ``eval --lr-grid``), and the mean of the three unseen ones. Every distillation run selects its synset on the VALIDATION split only
(and, with EMA, chooses raw or EMA there); nothing is tuned on the test split.

Budget (``SETTINGS["full"]``; ``--estimate`` prints the CPU time it needs): 8 experts x 10 epochs
of ConvNet-D3 width 32 on all 60,000 training images (enough experts that one is not matched over
and over, enough epochs for start epochs up to 8 with M 2); distillation: ipc 1 N 20 for 400
iterations, ipc 10 N 10 for 300 (the demo's N at 28 px), M 2, T+ chosen on validation (below), in-loop validation every 100
iterations (150 epochs, 1 network); the final evaluation trains 3 networks per architecture for 300
epochs (``--repeats`` / ``--eval-epochs`` change that). Each idea takes the published setting
scaled to this run: the schedule ``T+/2 : T+ : iterations/5`` (DATM: 10:20:1000 of 10000), skip
above 1.1 at ipc 1 / 1.0 at ipc 10, EMA decay 0.99 (FTD's 0.9995 averages over 2000 of 10000
iterations, a fifth of the run: 0.99 averages over 100 of 300-400), ``lr_y`` 5 at ipc 1 / 2 at ipc 10,
``match_layers deep:0.5`` (PAD at ipc >= 10; at ipc 1 PAD keeps every layer, we show deep:0.5 there
too so the row is an idea alone; "MTT + all" follows PAD's rule: all layers at ipc 1).

Plain MTT's max start epoch T+ is chosen per ipc on validation among ``tplus_grid`` (2, 4, 8:
the MTT reference uses 2 at ipc 1 and a larger one at ipc 10 on CIFAR-10), and every MTT row (each
idea, "all") uses the chosen one; the schedule then widens from T+/2 to T+. The MTT cells carry
their T+ in their names (``mtt_soft_t4_ipc10``).

Every cell (the store, each distillation run, each architecture's evaluation) is its own resumable
run directory under ``--out/cells``, run as a subprocess (``python -m mtt_fast.cli.main``) on one
thread; ``--jobs K`` runs K cells at once. A killed study resumes: finished cells are skipped,
unfinished ones resume. Across sessions on machines that keep nothing outside the repository: each
finished distillation's synset and summary and each evaluation's results are copied to
``benchmarks/results/trajectory_study_cells/<cell>/`` with the cell's command (commit that folder),
and an invocation on an empty ``--out`` puts back every kept cell whose command matches its own
(other settings: the cell runs again); the stores are trained again only while a distillation
is unfinished. ``--report-only`` writes ``benchmarks/results/trajectory_study.{json,md}``
(``--quick`` writes ``trajectory_study_quick.*``) from the finished cells, ``-`` for missing ones,
and ``mtt-fast report`` of the chosen cells in ``benchmarks/results/trajectory_study_report/``
(every invocation ends with both).

Soft labels at evaluation: the synsets store them; whether ``mtt-fast eval`` trains with them
(soft cross-entropy) depends on the build (``eval --hard-labels`` exists where it does); the report
records which.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import UNSEEN_LR_GRID, KeptCells, median_seconds, source_commit

RESULTS = Path(__file__).resolve().parent / "results"
#: finished cells' small outputs, kept (committed) so the study can span sessions: see ``_meta.KeptCells``
KEEP = RESULTS / "trajectory_study_cells"
ARCHS = ["convnet", "alexnet", "vgg11", "resnet18"]

SETTINGS: dict[str, dict] = {
    "full": {
        "res": 28,
        "experts": {"arch": "convnet", "width": 32, "depth": 3, "num_experts": 8, "epochs": 10, "lr": 0.03,
                    "batch_size": 256},
        "distill": {
            1: {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 8, "iterations": 400, "lr_img": 1000.0,
                "lr_lr": 1e-5},
            10: {"syn_steps": 10, "expert_epochs": 2, "max_start_epoch": 8, "iterations": 300, "lr_img": 100.0,
                 "lr_lr": 1e-5},
        },
        "distill_eval": {"eval_it": 100, "eval_epochs": 150, "eval_repeats": 1, "checkpoint_it": 10},
        # plain MTT's max start epoch T+, chosen per ipc on validation; every MTT row then uses it
        "tplus_grid": [2, 4, 8],
        "ideas": {"lr_y": {1: 5.0, 10: 2.0}, "skip": {1: 1.1, 10: 1.0}, "ema": 0.99, "layers": "deep:0.5"},
        "eval": {"epochs": 300, "repeats": 3},
    },
    "quick": {
        "res": 28,
        "experts": {"arch": "convnet", "width": 8, "depth": 3, "num_experts": 2, "epochs": 3, "lr": 0.03,
                    "batch_size": 64, "max_train_per_class": 30},
        "distill": {
            1: {"syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 2, "iterations": 4, "lr_img": 100.0,
                "lr_lr": 1e-5},
            10: {"syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 2, "iterations": 4, "lr_img": 100.0,
                 "lr_lr": 1e-5},
        },
        "distill_eval": {"eval_it": 2, "eval_epochs": 2, "eval_repeats": 1, "checkpoint_it": 2},
        "tplus_grid": [1, 2],
        "ideas": {"lr_y": {1: 5.0, 10: 2.0}, "skip": {1: 1.1, 10: 1.0}, "ema": 0.5, "layers": "deep:0.5"},
        "eval": {"epochs": 2, "repeats": 1},
    },
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def mtt_args(s: dict, ipc: int, tplus: int) -> list[str]:
    """Plain MTT's distill options at ``ipc`` with max start epoch ``tplus``."""
    d = {**s["distill"][ipc], "max_start_epoch": tplus, **s["distill_eval"]}
    return ["--method", "mtt", *[x for k, v in d.items() for x in (_flag(k), str(v))]]


def cell_name(key: str, ipc: int, tplus: int | None) -> str:
    """A distillation cell's name: the MTT rows carry their T+ (``mtt_soft_t4_ipc10``), the others not."""
    return f"{key}_t{tplus}_ipc{ipc}" if key.startswith("mtt") else f"{key}_ipc{ipc}"


def rows(s: dict, sam: bool, tplus: dict[int, int | None] | None = None) -> list[tuple[str, str, callable]]:
    """``(key, label, args(ipc) -> distill options)`` of every row, in table order. The MTT rows use
    ``tplus[ipc]`` (plain MTT's max start epoch chosen on validation; :func:`choose_tplus`)."""
    ideas = s["ideas"]
    tplus = tplus or {}

    def mtt(ipc: int) -> list[str]:
        return mtt_args(s, ipc, tplus[ipc])

    def schedule(ipc: int) -> list[str]:
        d, t = s["distill"][ipc], tplus[ipc]
        return ["--start-epoch-schedule", f"{max(1, t // 2)}:{t}:{max(1, d['iterations'] // 5)}"]

    soft = lambda ipc: ["--soft-labels", "--lr-y", str(ideas["lr_y"][ipc])]
    skip = lambda ipc: ["--skip-loss-above", str(ideas["skip"][ipc])]
    ema = lambda ipc: ["--ema-images", str(ideas["ema"])]
    layers = lambda ipc: ["--match-layers", ideas["layers"]]
    pad_rule = lambda ipc: ["--match-layers", "all" if ipc == 1 else ideas["layers"]]
    out = []
    for m, label in (("random", "random real"), ("herding", "herding"), ("kcenter", "k-center")):
        out.append((m, f"{label}", lambda ipc, m=m: ["--method", m]))
        out.append((f"{m}_soft", f"{label} + soft labels", lambda ipc, m=m: ["--method", m, "--soft-labels"]))
    out += [
        ("mtt", "MTT", mtt),
        ("mtt_soft", "MTT + learned soft labels (DATM)", lambda ipc: mtt(ipc) + soft(ipc)),
        ("mtt_schedule", "MTT + widening start range (DATM)", lambda ipc: mtt(ipc) + schedule(ipc)),
        ("mtt_skip", "MTT + loss skipping (DATM)", lambda ipc: mtt(ipc) + skip(ipc)),
        ("mtt_ema", "MTT + EMA images (FTD)", lambda ipc: mtt(ipc) + ema(ipc)),
        ("mtt_layers", "MTT + deep-layer matching (PAD)", lambda ipc: mtt(ipc) + layers(ipc)),
    ]
    if sam:
        out.append(("mtt_sam", "MTT + SAM experts (FTD)", mtt))
    out.append(("mtt_all", "MTT + all", lambda ipc: mtt(ipc) + soft(ipc) + schedule(ipc) + skip(ipc) + ema(ipc)
                + pad_rule(ipc)))
    return out


#: the rows the target compares (plain MTT, the combination, the soft-label controls), evaluated first
TARGET_ROWS = ("mtt", "mtt_all", "random_soft", "herding_soft", "kcenter_soft")


def _priority(cell: str) -> int:
    """Where an evaluation cell's row stands in :data:`TARGET_ROWS` (after them all: every other row)."""
    key = re.sub(r"_t\d+$", "", cell.split("_ipc")[0])
    return TARGET_ROWS.index(key) if key in TARGET_ROWS else len(TARGET_ROWS)


def _best_val(run: Path) -> tuple[float | None, int | None]:
    """A finished distillation's best validation score and its iteration (None: not finished)."""
    summ = run / "summary.json"
    if not ((run / "COMPLETE").is_file() and summ.is_file()):
        return None, None
    d = json.loads(summ.read_text())
    return next((v for k, v in d.items() if k.startswith("best_val_")), None), d.get("best_iteration")


def choose_tplus(cells: Path, s: dict, ipc: int) -> tuple[int | None, list[dict]]:
    """Plain MTT's T+ at ``ipc``: the grid point with the best VALIDATION score (ties: the earlier
    one); None until every grid cell has finished. Also every point's record."""
    grid = []
    for t in s["tplus_grid"]:
        val, it = _best_val(cells / cell_name("mtt", ipc, t))
        grid.append({"tplus": t, "best_val": val, "best_iteration": it})
    if any(g["best_val"] is None for g in grid):
        return None, grid
    return max(grid, key=lambda g: g["best_val"])["tplus"], grid


class Cell:
    """One resumable run directory and the command that fills it."""

    def __init__(self, name: str, run: Path, args: list[str], logs: Path):
        self.name, self.run, self.args, self.log = name, run, args, logs / f"{name}.log"
        self.kept: KeptCells | None = None  # where a finished cell is kept (None: not kept)
        self.stamps: KeptCells | None = None  # records which command finished the run (see attach)
        #: the commands of what this cell reads (a distillation's store, an evaluation's synset): a kept
        #: copy is put back only when they are the same too (the cell's own command names only paths)
        self.made_from: list[str] = []

    @property
    def signature(self) -> list[str]:
        return [*self.args, *self.made_from]

    @property
    def kept_files(self) -> list[str]:
        """What later cells and the report read: a distillation's synset and summary, an evaluation's
        results (the stores are not kept: a session that distills trains them again)."""
        if self.args[0] == "distill":
            return KeptCells.SYNSET_FILES
        return ["results.json"] if self.args[0] == "eval" else []

    def keep(self) -> None:
        if self.kept is not None and self.kept_files and self.done:
            self.kept.keep(self.name, self.run, self.kept_files, self.signature, {"wall_seconds": _wall(self.run)})

    def restore(self) -> bool:
        """Put the kept copy back (same command only), with its wall time; whether it was restored.
        An evaluation a session left unfinished gets its kept trained networks back instead."""
        if self.kept is None or self.done or not self.kept_files:
            return False
        if not self.kept.restore(self.name, self.run, self.kept_files, self.signature):
            if self.args[0] == "eval" and (n := self.kept.restore_partial(self.name, self.run, self.signature)):
                print(f"put back {n} trained networks of the unfinished {self.name}", flush=True)
            return False
        wall = (self.kept.record(self.name) or {}).get("wall_seconds")
        if wall is not None:
            (self.run.parent / f"{self.run.name}.wall.json").write_text(json.dumps({"seconds": wall}))
        return True

    @property
    def done(self) -> bool:
        return (self.run / "COMPLETE").is_file()

    def execute(self, threads: int, device: str) -> tuple[str, float | None, int]:
        """Run the cell (unless finished); returns its name, wall seconds (None: skipped) and exit code."""
        if self.done:
            return self.name, None, 0
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.log, "a") as f:
            f.write(f"$ {' '.join(self.args)}\n")
            f.flush()
            rc = subprocess.run([sys.executable, "-m", "mtt_fast.cli.main", *self.args, "--device", device,
                                 "--no-progress"], stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
        wall = time.perf_counter() - t0
        if rc == 0 and self.done:
            (self.run.parent / f"{self.run.name}.wall.json").write_text(json.dumps({"seconds": wall}))
            if self.stamps is not None:
                self.stamps.stamp(self.run, self.signature)
            self.keep()
        return self.name, wall, rc


def _eval_soft_supported() -> bool:
    """Whether this build's ``mtt-fast eval`` trains with a synset's soft labels (it has --hard-labels)."""
    out = subprocess.run([sys.executable, "-m", "mtt_fast.cli.main", "eval", "--help"], capture_output=True,
                         text=True, check=False).stdout
    return "--hard-labels" in out


def _run_all(cells: list[Cell], jobs: int, threads: int, device: str) -> list[str]:
    """Run cells ``jobs`` at a time; returns the names of the ones that failed."""
    failed = []
    todo = [c for c in cells if not c.done]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells already finished; running {len(todo)} with {jobs} jobs",
          flush=True)
    kept = next((c.kept for c in todo if c.kept is not None), None)
    # the evaluations' trained networks are kept as they come (a session may end in the middle of a cell)
    stop_watch = kept.watch(lambda: [(c.name, c.run, c.signature) for c in todo
                                     if c.kept is not None and c.args[0] == "eval"]) if kept else None
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for name, wall, rc in pool.map(lambda c: c.execute(threads, device), todo):
                status = "ok" if rc == 0 else f"FAILED (exit {rc}, see its log)"
                print(f"  {name}: {status}" + (f", {wall:.0f} s" if wall is not None else ""), flush=True)
                if rc != 0:
                    failed.append(name)
    finally:
        if stop_watch is not None:
            stop_watch()
    return failed


def _wall(run: Path) -> float | None:
    p = run.parent / f"{run.name}.wall.json"
    return json.loads(p.read_text())["seconds"] if p.is_file() else None


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.1f} ± {std:.1f}"


def report(out: Path, s: dict, table_rows, ipcs: list[int], archs: list[str], quick: bool, meta: dict) -> None:
    """Write ``benchmarks/results/trajectory_study[_quick].{json,md}`` from the finished cells."""
    cells = out / "cells"
    entries, lines, tplus_grids = [], [], {}
    unseen = [a for a in archs if a != "convnet"]
    for ipc in ipcs:
        tplus, tplus_grids[ipc] = choose_tplus(cells, s, ipc)
        lines += [f"\n### ipc {ipc}\n",
                  f"Plain MTT's max start epoch T+ (chosen on validation among {s['tplus_grid']}, used by every MTT "
                  f"row): {'not chosen yet' if tplus is None else tplus}. Validation score of each: "
                  + ", ".join(f"T+ {g['tplus']}: " + ("-" if g["best_val"] is None else f"{g['best_val']:.2f}"
                                                        f" (it {g['best_iteration']})") for g in tplus_grids[ipc])
                  + ".\n",
                  "| method | " + " | ".join(archs) + " | unseen mean | selected | distill s |",
                  "|---" * (len(archs) + 4) + "|"]
        for key, label, _ in table_rows:
            cname = cell_name(key, ipc, tplus)
            run = cells / cname
            res: dict = {}
            for arch in archs:
                p = cells / f"{cname}_eval_{arch}" / "results.json"
                if p.is_file() and (p.parent / "COMPLETE").is_file():
                    r = json.loads(p.read_text())["results"][arch]
                    res[arch] = {"mean": r["mean"]["accuracy"], "std": r["std"]["accuracy"], "lr": r.get("lr"),
                                 "lr_chosen_on_val": "lr_selection" in r}
            um = [res[a]["mean"] for a in unseen if a in res]
            unseen_mean = sum(um) / len(um) if um and len(um) == len(unseen) else None
            summ = run / "summary.json"
            summary = json.loads(summ.read_text()) if summ.is_file() else {}
            entries.append({"row": key, "label": label, "ipc": ipc, "run": str(run), "results": res,
                            "tplus": tplus if key.startswith("mtt") else None,
                            "unseen_mean": unseen_mean, "summary": summary, "distill_seconds": _wall(run),
                            "eval_seconds": {a: _wall(cells / f"{cname}_eval_{a}") for a in archs}})
            sel = summary.get("selected", "")
            wall = _wall(run)
            lines.append(f"| {label} | " + " | ".join(_fmt(res.get(a, {}).get("mean"), res.get(a, {}).get("std"))
                                                   for a in archs)
                         + f" | {'-' if unseen_mean is None else f'{unseen_mean:.1f}'} | {sel} | "
                         + ("-" if wall is None else f"{wall:.0f}") + " |")
    name = "trajectory_study_quick" if quick else "trajectory_study"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**meta, "settings": _jsonable(s), "rows": entries,
                                                      "tplus_grid": {str(k): v for k, v in tplus_grids.items()}},
                                                     indent=2) + "\n")
    head = (f"# Trajectory-matching ideas on Fashion-MNIST (issue 18){' — QUICK smoke setting, not a result' if quick else ''}\n\n"
            f"`{meta['command']}` at commit {meta['commit']}. Test accuracy (%) of networks trained from scratch on "
            f"each synset, mean ± std over {s['eval']['repeats']} networks per architecture ({s['eval']['epochs']} "
            f"epochs); ConvNet is the distillation backbone (at the synset's learned rate, 0.01 without one), the "
            f"others are unseen (each synset's starting rate chosen on the validation split among "
            f"{UNSEEN_LR_GRID}: `eval --lr-grid`, recorded in the JSON). Every synset was selected on "
            f"the validation split. Soft labels used at evaluation: "
            f"{'yes (soft cross-entropy)' if meta['eval_soft_labels'] else 'NO (this build evaluates every synset with its hard labels)'}. "
            f"`selected`: raw or EMA set (EMA rows). `-`: that cell has not finished. Settings: "
            f"`benchmarks/trajectory_study.py` and the JSON beside this file.\n")
    (RESULTS / f"{name}.md").write_text(head + "\n".join(lines) + "\n")
    print(head + "\n".join(lines))


#: seconds per unit on ONE thread of this project's 2-core CPU while other jobs loaded it (load
#: average 7-9; measured 2026-12-02 with /tmp timing of plain torch steps at 28 px, no DSA): an
#: expert SGD step on 256 images; an adjoint MTT iteration per synthetic image per student step
#: (ipc 1 N 20: 4.9 s; ipc 10 N 20: 32 s); one eval SGD step on n images (10 -> 100 images).
UNIT_SECONDS = {"expert_step_256": 1.44, "mtt_image_step": 0.016,
                "eval_step": {"convnet": (0.1, 1.0), "alexnet": (1.0, 8.6), "vgg11": (0.74, 13.4),
                              "resnet18": (3.4, 20.9)},
                "coreset_cell": 200.0,
                # testing one trained network: seconds per test image (the --quick cells: AlexNet 625 s,
                # VGG11 458 s for one network on the 10,000 test images; ResNet18 scaled by its step cost)
                "test_image": {"convnet": 0.005, "alexnet": 0.06, "vgg11": 0.045, "resnet18": 0.15},
                "test_images": 10000}


UNITS_FILE = RESULTS / "trajectory_study_units_cpu.json"


def measure_units(threads: int = 1, res: int = 28) -> dict:
    """``UNIT_SECONDS``' entries timed on this machine now (``--measure-units``), with the study's own
    code paths: an expert step (ConvNet-D3 w32, 256 images, DSA), one ``auto`` MTT iteration per
    synthetic image per student step (ipc 10, N 10, the experts' network), one evaluation SGD step
    per architecture on 10 and 100 images (EvalConfig's networks, DSA, EMA: ``train_on_synset``)
    and the test pass per image (``predict_proba``). Medians of a few repetitions after a warm-up."""
    import torch

    from mtt_fast.augment import DSAConfig
    from mtt_fast.evaluate.metrics import predict_proba
    from mtt_fast.evaluate.protocol import EvalConfig, train_on_synset
    from mtt_fast.fit import fit_classifier
    from mtt_fast.match import ENGINES, Student, plan_steps
    from mtt_fast.models import FlatParams, get_network
    from mtt_fast.runtime import retain_freed_memory

    torch.set_num_threads(threads)
    retain_freed_memory()
    gen = torch.Generator().manual_seed(0)

    def timed(fn, reps: int = 3) -> float:
        return median_seconds(fn, reps)

    units: dict = {"eval_step": {}, "test_image": {}}
    net = get_network("convnet", 1, 10, res, width=32, depth=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(256, 1, res, res), torch.arange(256) % 10
    units["expert_step_256"] = timed(lambda: fit_classifier(net, lambda e: [(x, y)], opt, epochs=1, dsa=DSAConfig(),
                                                              generator=gen), reps=5)
    student = Student.of(net)
    start = FlatParams.of(net).flatten(net)
    target = start + 0.01 * torch.randn_like(start)
    n, steps = 100, 10
    images, labels = torch.randn(n, 1, res, res), torch.arange(n) % 10

    def mtt() -> None:
        plan = plan_steps(n, (1, res, res), steps, n, DSAConfig(), gen)
        ENGINES["auto"](student, start, target, images, labels, torch.tensor(0.01), plan)

    units["mtt_image_step"] = timed(mtt, reps=2) / (steps * (n + 10))

    class _Split:  # what predict_proba reads: len() and get(indices, device)
        def __init__(self, m: int) -> None:
            self.x = torch.randn(m, 1, res, res)

        def __len__(self) -> int:
            return len(self.x)

        def get(self, idx, device="cpu"):
            return self.x[idx].to(device)

    test = _Split(1000)
    for arch in ARCHS:
        per_n = []
        for m in (10, 100):
            xs, ys = torch.randn(m, 1, res, res), torch.arange(m) % 10
            def train(epochs: int) -> None:
                train_on_synset(arch, xs, ys, channels=1, num_classes=10, res=res, lr=0.01,
                                cfg=EvalConfig(epochs=epochs), seed=0)

            # one step per epoch (n <= batch 256): the slope between 1 and 5 epochs, without the setup
            per_n.append(max(timed(lambda: train(5), reps=1) - timed(lambda: train(1), reps=1), 0.0) / 4)
        units["eval_step"][arch] = tuple(per_n)
        model = get_network(arch, 1, 10, res)
        units["test_image"][arch] = timed(lambda: predict_proba(model, test), reps=2) / len(test)
    units["coreset_cell"] = UNIT_SECONDS["coreset_cell"]  # not measured: a coreset cell is one expert pass
    units["test_images"] = UNIT_SECONDS["test_images"]
    return units


def estimate(s: dict, table_rows, ipcs: list[int], archs: list[str], sam: bool = False, units: dict | None = None) -> str:
    """A rough CPU-seconds estimate of the whole setting from ``units`` (default ``UNIT_SECONDS``)."""
    u, e = units or UNIT_SECONDS, s["experts"]
    steps_per_epoch = math.ceil(60000 / e["batch_size"]) * e["batch_size"] / 256
    one_store = e["num_experts"] * e["epochs"] * steps_per_epoch * u["expert_step_256"]
    parts = {"experts": one_store * (3 if sam else 1)}  # a SAM step costs two plain ones
    distill = evals = 0.0
    de = s["distill_eval"]
    for ipc in ipcs:
        d = s["distill"][ipc]
        n = 10 * ipc
        in_loop = (d["iterations"] // de["eval_it"] + 1) * de["eval_epochs"] * u["eval_step"]["convnet"][0 if ipc == 1 else 1]
        one_mtt = d["iterations"] * d["syn_steps"] * (n + 10) * u["mtt_image_step"] + in_loop
        distill += (len(s["tplus_grid"]) - 1) * one_mtt  # plain MTT at the other T+ of the grid
        for key, _, _ in table_rows:
            if key.startswith("mtt"):
                distill += one_mtt + (in_loop if "ema" in key or key == "mtt_all" else 0)
            else:
                distill += u["coreset_cell"] if key.split("_")[0] != "random" else 60.0
            grid = len(UNSEEN_LR_GRID.split(","))  # unseen: one network per candidate rate, the winner is repeat 0
            for a in archs:
                nets = s["eval"]["repeats"] + (0 if a == "convnet" else grid - 1)
                evals += nets * s["eval"]["epochs"] * math.ceil(n / 256) * u["eval_step"][a][0 if ipc == 1 else 1]
                # the test pass of each reported network, and a validation pass (5,000 images) per candidate
                evals += (s["eval"]["repeats"] * u["test_images"] + (0 if a == "convnet" else grid * 5000)) \
                    * u["test_image"][a]
    parts.update({"distill": distill, "eval": evals})
    total = sum(parts.values())
    lines = [f"{k}: {v / 3600:.1f} CPU-hours" for k, v in parts.items()]
    where = ("units measured by --measure-units" if units else
             "UNIT_SECONDS, measured on a loaded core of this machine; an idle one is about 3x faster")
    return "\n".join(lines) + f"\ntotal: {total / 3600:.1f} CPU-hours on one core ({where}); wall ~ total / --jobs"


def _int_keys(d: dict) -> dict:
    return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in d.items()}


def _jsonable(s: dict) -> dict:
    return json.loads(json.dumps(s, default=str))


def mtt_report(out: Path, distills: list, evals: list, quick: bool, device: str) -> Path | None:
    """``mtt-fast report`` of the chosen cells (the T+ grid's other runs left out: they are not rows), to
    ``benchmarks/results/trajectory_study[_quick]_report/``. The cells are laid out as distill runs
    under ``--out/report_tree/trajectory_study`` (links to each run's ``synset/`` and ``summary.json``, its ConvNet
    evaluation as ``eval/``, the unseen ones as ``eval_cross/<arch>``), so the report reads each
    evaluation's synset and names every variant; a run kept without its ``config.yaml`` is read
    from its synset. None when no chosen run has finished."""
    import shutil

    shutil.rmtree(out / "report_tree", ignore_errors=True)
    tree = out / "report_tree" / "trajectory_study"  # its name starts the runs' names in the report
    by_synset = {}
    for e in evals:
        by_synset.setdefault(Path(e.args[e.args.index("--synset") + 1]).name, []).append(e)
    for d in distills:
        if not (d.run / "synset" / "meta.json").is_file():
            continue
        (tree / d.name).mkdir(parents=True)
        for f in ("synset", "summary.json"):
            if (d.run / f).exists():
                (tree / d.name / f).symlink_to(d.run / f)
        for e in by_synset.get(d.name, []):
            if (e.run / "results.json").is_file():
                arch = e.name.split("_eval_")[1]
                link = tree / d.name / ("eval" if arch == "convnet" else f"eval_cross/{arch}")
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(e.run)
    if not tree.is_dir():
        return None
    dest = RESULTS / f"trajectory_study{'_quick' if quick else ''}_report"
    subprocess.run([sys.executable, "-m", "mtt_fast.cli.main", "report", str(tree), "--out", str(dest), "--overwrite",
                    "--no-load-data", "--no-progress", "--num-threads", "1", "--device", device], check=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="trajectory-study")
    ap.add_argument("--quick", action="store_true", help="A tiny setting that only proves the pipeline runs.")
    ap.add_argument("--jobs", type=int, default=2, help="Cells run at once (each on --threads threads).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ipcs", default="1,10")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--rows", default=None, help="Only these row keys (comma-separated), e.g. mtt,mtt_all.")
    ap.add_argument("--sam-rho", type=float, default=None,
                    help="Also train SAM experts (buffer --sam-rho) for the FTD rows, where this build has it.")
    ap.add_argument("--data-root", default=None, help="Fashion-MNIST directory (default: Debian's).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-only", action="store_true", help="Write the report from the finished cells; run nothing.")
    ap.add_argument("--repeats", type=int, default=None, help="Networks per architecture in the final evaluation.")
    ap.add_argument("--eval-epochs", type=int, default=None, help="Epochs of each final evaluation network.")
    ap.add_argument("--estimate", action="store_true", help="Print the CPU time the setting needs; run nothing "
                    "(from the units --measure-units wrote, where they exist).")
    ap.add_argument("--measure-units", action="store_true", help="Time the study's unit costs on this machine "
                    f"(--threads threads), write {UNITS_FILE.name} under benchmarks/results/; run nothing else.")
    args = ap.parse_args()
    if args.measure_units:
        import torch

        units = measure_units(args.threads)
        UNITS_FILE.write_text(json.dumps({"commit": source_commit(), "torch": torch.__version__,
                                          "threads": args.threads, "load_average": os.getloadavg(),
                                          "units": units}, indent=1) + "\n")
        print(json.dumps(units, indent=1))
        print(f"wrote {UNITS_FILE}")
        return
    t_start = time.perf_counter()
    s = json.loads(json.dumps(SETTINGS["quick" if args.quick else "full"]), object_hook=_int_keys)
    if args.repeats is not None:
        s["eval"]["repeats"] = args.repeats
    if args.eval_epochs is not None:
        s["eval"]["epochs"] = args.eval_epochs
    out = Path(args.out).resolve()
    cells_dir, logs = out / "cells", out / "logs"
    ipcs = [int(i) for i in args.ipcs.split(",") if i]
    archs = [a for a in args.archs.split(",") if a]
    sam = args.sam_rho is not None
    only = set(args.rows.split(",")) if args.rows else None

    def table(tplus: dict | None = None):
        return [r for r in rows(s, sam=sam, tplus=tplus) if only is None or r[0] in only]

    e = s["experts"]
    data = ["--dataset", "fashion-mnist", "--res", str(s["res"])] + (["--data-root", args.data_root] if args.data_root else [])
    buf_args = ["buffer", *data, *[x for k, v in e.items() for x in (_flag(k), str(v))], "--seed", str(args.seed)]
    stores = {"plain": Cell("buffer", cells_dir / "buffer", [*buf_args, "--out", str(cells_dir / "buffer")], logs)}
    if sam:
        stores["sam"] = Cell("buffer_sam", cells_dir / "buffer_sam",
                             [*buf_args, "--sam-rho", str(args.sam_rho), "--out", str(cells_dir / "buffer_sam")], logs)
    kept = None if args.quick else KeptCells(KEEP, out)  # finished cells kept in the repository (not --quick)
    stamps = KeptCells(KEEP, out)  # which command finished each run under --out (with --quick too)
    restored: list[str] = []

    def attach(cells: list[Cell]) -> list[Cell]:
        """Hook the cells to the kept copies: stop on a run finished here by another command, put
        back the kept ones, keep the ones finished here."""
        stamps.check_finished([(c.name, c.run, c.signature) for c in cells])
        for c in cells:
            c.stamps = stamps
        if kept is not None:
            for c in cells:
                c.kept = kept
                if c.restore():
                    restored.append(c.name)
                elif c.done and (kept.record(c.name) or {}).get("argv") != kept.signature(c.signature):
                    c.keep()  # finished here by an earlier invocation: not kept yet, or kept with an older record
        return cells

    def distill_cell(key: str, ipc: int, tplus: int | None, opts: list[str]) -> Cell:
        store = stores["sam"] if key in ("mtt_sam", "mtt_all") and "sam" in stores else stores["plain"]
        run = cells_dir / cell_name(key, ipc, tplus)
        cell = Cell(run.name, run, ["distill", "--buffer", str(store.run), "--ipc", str(ipc), "--seed", str(args.seed),
                                    *opts, "--out", str(run)], logs)
        cell.made_from = ["#store-made-by", *store.args]
        return cell

    # phase 1: the coreset rows and plain MTT at every T+ of the grid (the choice is made on validation)
    any_mtt = any(k.startswith("mtt") for k, _, _ in table({}))
    phase1 = {}
    for ipc in ipcs:
        for key, _, opts in table({}):
            if not key.startswith("mtt"):
                c = distill_cell(key, ipc, None, opts(ipc))
                phase1[c.name] = c
        if any_mtt:
            for t in s["tplus_grid"]:
                c = distill_cell("mtt", ipc, t, mtt_args(s, ipc, t))
                phase1[c.name] = c
    attach(list(phase1.values()))

    def phase2() -> dict[str, Cell]:
        """Every row's distillation at the chosen T+ (MTT rows of an ipc whose choice is not made yet: none)."""
        cells = {}
        for ipc in ipcs:
            t = choose_tplus(cells_dir, s, ipc)[0] if any_mtt else None
            for key, _, opts in table({ipc: t}):
                if key.startswith("mtt") and t is None:
                    continue
                c = phase1.get(cell_name(key, ipc, t)) or distill_cell(key, ipc, t, opts(ipc))
                cells[c.name] = c
        return cells

    def evals_of(distills: dict[str, Cell]) -> list[Cell]:
        out_cells = []
        for c in distills.values():
            for arch in archs:
                ev = cells_dir / f"{c.name}_eval_{arch}"
                grid = [] if arch == "convnet" else ["--lr-grid", UNSEEN_LR_GRID]  # unseen: rate chosen on val
                out_cells.append(Cell(ev.name, ev, ["eval", "--synset", str(c.run), "--archs", arch, "--repeats",
                                                    str(s["eval"]["repeats"]), "--epochs", str(s["eval"]["epochs"]),
                                                    *grid, "--seed", str(args.seed), "--out", str(ev)], logs))
                out_cells[-1].made_from = ["#synset-made-by", *c.signature]
        return out_cells

    if args.estimate:
        measured = json.loads(UNITS_FILE.read_text())["units"] if UNITS_FILE.is_file() else None
        print(estimate(s, table({i: s["distill"][i]["max_start_epoch"] for i in ipcs}), ipcs, archs, sam=sam,
                       units=measured))
        return
    chosen = phase2()
    attach([c for n, c in chosen.items() if n not in phase1])
    evals = attach(evals_of(chosen))
    failed: list[str] = []
    if not args.report_only:
        undone = any(not c.done for c in [*phase1.values(), *chosen.values()]) or any(
            any_mtt and choose_tplus(cells_dir, s, i)[0] is None for i in ipcs)
        if undone:  # the stores feed only the distillations: every core, nothing else runs yet
            failed += _run_all(list(stores.values()), 1, max(1, args.jobs * args.threads), args.device)
        if not failed:
            failed += _run_all(list(phase1.values()), args.jobs, args.threads, args.device)
            chosen = phase2()  # the T+ grid has finished: the MTT rows at the chosen T+
            attach([c for n, c in chosen.items() if n not in phase1])
            failed += _run_all(list(chosen.values()), args.jobs, args.threads, args.device)
            evals = attach(evals_of(chosen))
            ready = [c for c in evals if (Path(c.args[c.args.index("--synset") + 1]) / "COMPLETE").is_file()]
            # the cheap backbone column of every row first, then the unseen architectures, ipc 1 before ipc 10,
            # and within each the target's rows (plain MTT, MTT + all, the soft-label controls) before the
            # others (a study spread over sessions fills the comparisons that decide the target early)
            ready.sort(key=lambda c: (c.name.split("_eval_")[1] != "convnet", "_ipc10_" in c.name,
                                      _priority(c.name)))
            failed += _run_all(ready, args.jobs, args.threads, args.device)
    if restored:
        print(f"restored {len(restored)} finished cells from {KEEP}", flush=True)
    table_rows = table()
    distills = list({**phase1, **chosen}.values())
    meta = {"commit": source_commit(), "command": " ".join(["python", *sys.argv]), "quick": args.quick,
            "jobs": args.jobs, "threads_per_cell": args.threads, "device": args.device,
            "eval_soft_labels": _eval_soft_supported(), "archs": archs, "ipcs": ipcs,
            "cells": {"stores": len(stores), "distill": len(distills), "eval": len(evals)},
            "cell_seconds_total": sum(w for c in [*stores.values(), *distills, *evals]
                                      if (w := _wall(c.run)) is not None),
            "wall_seconds_this_invocation": time.perf_counter() - t_start}
    report(out, s, table_rows, ipcs, archs, args.quick, meta)
    mtt_report(out, list(chosen.values()), evals, args.quick, args.device)
    if failed:
        print(f"{len(failed)} cells failed: {', '.join(failed)} (rerun to resume; logs in {logs})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
