"""Issue 17's study: ADA vs today's GAN recipe, then GLaD vs pixel MTT vs random real (Fashion-MNIST, 28 px).

    python benchmarks/glad_study.py --out /tmp/glad_study --jobs 2            # the study
    python benchmarks/glad_study.py --out /tmp/glad_study_quick --quick --jobs 2   # a few minutes: the plumbing
    python benchmarks/glad_study.py --out /tmp/glad_study --report-only     # the report from finished cells

What it runs (every cell is one `mtt-fast` command in its own process with ONE CPU thread, its own
resumable run directory under ``--out`` and a log in ``--out/logs/``; ``--jobs`` cells run at once;
a killed study resumes where it stopped, a finished cell is a no-op):

1. ``buffer``: experts at 28 px (ConvNet-D3, width 32; the demo's settings otherwise);
2. generators, the same CPU budget (``--gan-steps`` steps, batch 32) for both recipes:
   ``gan_ada`` (``--augment ada``, style mixing 0.9: the new default) and ``gan_diffaug``
   (``--augment diffaug --style-mixing 0``: the recipe before), on all training images; and the
   limited-data pair ``gan_ada_limited`` / ``gan_diffaug_limited`` on ``--limited`` images per
   class, quality numbers (class consistency, kernel distance, diversity; see
   ``mtt_fast/generative/quality.py``) every ``quality_every`` steps;
3. the GLaD generator is the full-data one with the lower best mean kernel distance (measured
   on validation images), its ``generator_best.json``;
4. distillation at each ipc: random real, pixel MTT (the demo's settings) and the GLaD grid
   (space wp / w x layer -1 / 0 / 1, MTT's settings plus ``GLAD``); the grid point with the
   best validation score is the GLaD row (no test numbers are looked at to choose);
5. evaluation on the 10,000 test images: every synset on every ``--archs`` architecture,
   ``--repeats`` networks, ``--eval-epochs`` epochs; ConvNet is the backbone (the synset's learned
   rate), the others unseen: their starting rate is chosen per synset on the validation split among
   ``_meta.UNSEEN_LR_GRID`` (``eval --lr-grid``; the winning network is repeat 0).

A study can span sessions on machines that keep nothing outside the repository: each finished
cell's small outputs (synsets, evaluation results, the full-data generators' best checkpoint;
not the buffer) are copied to ``benchmarks/results/glad_study_cells/<cell>/`` with the cell's
command, and a later invocation on an empty ``--out`` puts back every kept cell whose command
matches its own (other settings: the cell reruns). Commit that folder between sessions.

The report: ``benchmarks/results/glad_study.{md,json}`` (``--quick``: ``glad_study_quick.*``, a
plumbing check whose numbers mean nothing) and the generators' last sample grids in
``benchmarks/results/glad_study_grids/`` (``glad_study_quick_grids/``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import UNSEEN_LR_GRID, KeptCells, source_commit

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
#: where each finished cell's small outputs are kept (committed), so that a study spread over
#: several sessions on machines that do not keep --out picks up where it stopped
KEEP = RESULTS / "glad_study_cells"


def _kept_files(name: str) -> list[str]:
    """The files of a finished cell that later cells and the report read (what is kept)."""
    if name.startswith("eval_"):
        return ["results.json"]
    if name.startswith(("random_", "mtt_", "glad_")):
        return KeptCells.SYNSET_FILES
    if name.startswith("gan_") and not name.endswith("_limited"):  # what GLaD distills from
        return ["generator_best.json", "generator_best.safetensors", "generator_best.w_avg.safetensors",
                "metrics.jsonl"]
    return []  # the buffer and the limited-data generators: rerun if needed (their records are in the JSON)

#: the study's settings (CPU scale, not the paper's); --quick overrides them with QUICK
FULL: dict = {
    "res": 28,
    "data": [],
    "experts": {"arch": "convnet", "width": 32, "depth": 3, "num_experts": 3, "epochs": 3, "lr": 0.03,
                "batch_size": 256, "max_train_per_class": None},
    "gan": {"batch_size": 32, "quality_every": 250, "quality_samples": 100, "sample_every": 500,
            "checkpoint_every": 250, "log_every": 50, "classifier_epochs": 2, "max_train_per_class": None},
    "gan_steps": 3000,
    "limited": 500,
    "distill": {
        1: {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 2, "iterations": 1000, "lr_img": 1000.0,
            "lr_lr": 1e-5},
        10: {"syn_steps": 10, "expert_epochs": 2, "max_start_epoch": 2, "iterations": 1000, "lr_img": 100.0,
             "lr_lr": 1e-5},
    },
    "distill_eval": {"eval_it": 100, "eval_epochs": 150, "eval_repeats": 1},
    "glad": {"lr_w": 1.0, "lr_img": 100.0},
    "glad_grid": [("wp", -1), ("wp", 0), ("wp", 1), ("w", -1), ("w", 0), ("w", 1)],
    # the grid runs this many iterations; the chosen point then runs ``distill[ipc]["iterations"]``
    # like pixel MTT (both keep their best synset on validation, evaluated every eval_it iterations)
    "glad_grid_iterations": 300,
    "eval": {"epochs": 300, "repeats": 3, "archs": ["convnet", "alexnet", "vgg11", "resnet18"],
             "lr_grid": UNSEEN_LR_GRID},
}
QUICK: dict = {
    **FULL,
    "data": ["--data-option", "val_size=500"],
    "experts": {**FULL["experts"], "num_experts": 2, "epochs": 2, "max_train_per_class": 100},
    "gan": {**FULL["gan"], "quality_every": 10, "quality_samples": 10, "sample_every": 20, "checkpoint_every": 10,
            "log_every": 5, "classifier_epochs": 1, "max_train_per_class": 100},
    "gan_steps": 20,
    "limited": 20,
    "distill": {ipc: {**kw, "iterations": 4, "syn_steps": 4, "expert_epochs": 1, "max_start_epoch": 1}
                for ipc, kw in FULL["distill"].items()},
    "distill_eval": {"eval_it": 2, "eval_epochs": 3, "eval_repeats": 1},
    "glad_grid": [("wp", -1), ("w", 0)],
    "glad_grid_iterations": 2,
    "eval": {**FULL["eval"], "epochs": 3, "repeats": 1, "archs": ["convnet", "alexnet"]},
}
GAN_RECIPES = {"ada": ["--augment", "ada"], "diffaug": ["--augment", "diffaug", "--style-mixing", "0"],
               # the two other corners of (augment x style mixing): which of the two changes made the difference
               "ada_nomix": ["--augment", "ada", "--style-mixing", "0"], "diffaug_mix": ["--augment", "diffaug"]}
RECIPE_LABEL = {"ada": "ADA, mixing 0.9 (default)", "diffaug": "diffaug, no mixing (before)",
                "ada_nomix": "ADA, no mixing", "diffaug_mix": "diffaug, mixing 0.9"}


def _opts(d: dict) -> list[str]:
    """``{"lr_img": 100}`` -> ``["--lr-img", "100"]`` (None values left out)."""
    out = []
    for k, v in d.items():
        if v is not None:
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


class Cell:
    """One resumable command: ``argv(study)`` is built when its ``deps`` have finished."""

    def __init__(self, name: str, out: Path, deps: list[str], argv) -> None:
        self.name, self.out, self.deps, self.argv = name, out, deps, argv

    def done(self) -> bool:
        return (self.out / "COMPLETE").is_file()


class Study:
    """The cells of the study (see the module docstring) and what they are chosen from."""

    def __init__(self, out: Path, s: dict, ipcs: list[int], seed: int, quick: bool = False) -> None:
        self.out, self.s, self.ipcs, self.seed, self.quick = out, s, ipcs, seed, quick
        self.kept = KeptCells(KEEP, out)
        self.data = ["--dataset", "fashion-mnist", "--res", str(s["res"]), *s["data"]]
        common = ["--seed", str(seed), "--no-progress", "--device", "cpu"]
        cells = [Cell("buffer", out / "buffer", [], lambda: ["buffer", *self.data, *_opts(s["experts"]), *common,
                                                             "--out", out / "buffer"])]
        for recipe, flags in GAN_RECIPES.items():
            for limited in (False, True):
                name = f"gan_{recipe}" + ("_limited" if limited else "")
                g = {**s["gan"], "steps": s["gan_steps"]}
                if limited:
                    g["max_train_per_class"] = s["limited"]
                cells.append(Cell(name, out / name, [], lambda g=g, flags=flags, name=name: [
                    "gan", "train", *self.data, *_opts(g), *flags, "--num-threads", "1", *common, "--out", out / name]))
        for ipc in ipcs:
            kw = {**s["distill"][ipc], **s["distill_eval"]}
            base = ["distill", "--buffer", out / "buffer", "--ipc", str(ipc), *common]
            cells.append(Cell(f"random_ipc{ipc}", out / f"random_ipc{ipc}", ["buffer"],
                              lambda base=base, ipc=ipc: [*base, "--method", "random", "--out", out / f"random_ipc{ipc}"]))
            cells.append(Cell(f"mtt_ipc{ipc}", out / f"mtt_ipc{ipc}", ["buffer"],
                              lambda base=base, kw=kw, ipc=ipc: [*base, "--method", "mtt", *_opts(kw),
                                                                 "--out", out / f"mtt_ipc{ipc}"]))
            grid = []
            for space, layer in s["glad_grid"]:
                name = f"glad_ipc{ipc}_{space}_l{layer}"
                grid.append(name)
                gkw = {**kw, "iterations": s["glad_grid_iterations"], **s["glad"], "space": space, "layer": layer}
                cells.append(Cell(name, out / name, ["buffer", "gan_ada", "gan_diffaug"],
                                  lambda base=base, gkw=gkw, name=name: [
                                      *base, "--method", "glad", "--generator", self.generator(), *_opts(gkw),
                                      "--out", out / name]))
            # the chosen grid point, run as long as pixel MTT
            cells.append(Cell(f"glad_ipc{ipc}_final", out / f"glad_ipc{ipc}_final", grid,
                              lambda base=base, kw=kw, ipc=ipc: [
                                  *base, "--method", "glad", "--generator", self.generator(),
                                  *_opts({**kw, **s["glad"], **self.glad_point(ipc)}), "--out",
                                  out / f"glad_ipc{ipc}_final"]))
        for ipc in ipcs:
            for method in ("random", "mtt", "glad"):
                for arch in s["eval"]["archs"]:
                    name = f"eval_{method}_ipc{ipc}_{arch}"
                    deps = [f"glad_ipc{ipc}_final" if method == "glad" else f"{method}_ipc{ipc}"]
                    cells.append(Cell(name, out / "eval" / f"{method}_ipc{ipc}" / arch, deps,
                                      lambda method=method, ipc=ipc, arch=arch, name=name: [
                                          "eval", "--synset", self.synset(method, ipc), "--archs", arch,
                                          "--repeats", str(s["eval"]["repeats"]), "--epochs", str(s["eval"]["epochs"]),
                                          # unseen architectures: each synset's rate chosen on validation
                                          *([] if arch == "convnet" else ["--lr-grid", s["eval"]["lr_grid"]]),
                                          *common, "--out", out / "eval" / f"{method}_ipc{ipc}" / arch]))
        self.cells = {c.name: c for c in cells}

    # ------------------------------------------------------------------ keeping cells between sessions
    def signature(self, name: str) -> list:
        """What a kept copy must match to be put back: the cell's command and, for an evaluation,
        the command that made its synset (the evaluation's own command names only the synset's
        directory: a synset made again with other settings must be evaluated again)."""
        cell = self.cells[name]
        sig = list(cell.argv())
        if name.startswith("eval_"):
            for dep in cell.deps:
                sig += ["#synset-made-by", *self.cells[dep].argv()]
        return sig

    def check_finished(self) -> None:
        """Stop when a run finished under --out was made by another command than this study's
        (``_meta.KeptCells.check_finished``; a cell whose command cannot be built yet is skipped)."""
        cells = []
        for name, cell in self.cells.items():
            if cell.done():
                try:
                    cells.append((name, cell.out, self.signature(name)))
                except TypeError:  # e.g. the long GLaD run of a grid someone deleted: nothing to compare
                    continue
        self.kept.check_finished(cells)

    def keep(self, name: str) -> None:
        """Keep a finished cell's small outputs under ``KEEP/<name>`` (``_meta.KeptCells``; not with --quick)."""
        if not self.quick and _kept_files(name):
            self.kept.keep(name, self.cells[name].out, _kept_files(name), self.signature(name))

    def restore(self) -> list[str]:
        """Put back every kept cell not finished under --out whose command equals this study's; their names."""
        if self.quick:
            return []
        restored = []
        for name, cell in self.cells.items():  # in order: a GLaD evaluation's command needs its grid restored
            if cell.done() or self.kept.record(name) is None:
                continue
            try:
                argv = self.signature(name)
            except TypeError:  # the GLaD point to run long is not chosen yet (its grid is not all here)
                continue
            if self.kept.restore(name, cell.out, _kept_files(name), argv):
                restored.append(name)
        for name, cell in self.cells.items():  # an evaluation a session left unfinished: its trained networks
            if name.startswith("eval_") and not cell.done() and self.kept.partial_record(name) is not None:
                try:
                    n = self.kept.restore_partial(name, cell.out, self.signature(name))
                except TypeError:
                    continue
                if n:
                    print(f"put back {n} trained networks of the unfinished {name}", flush=True)
        if restored:
            print(f"restored {len(restored)} finished cells from {KEEP}: {', '.join(restored)}", flush=True)
        return restored

    def keep_finished(self) -> None:
        """Keep the cells finished under --out (by an earlier invocation, or by hand) not kept yet."""
        for name, cell in self.cells.items():
            if cell.done() and _kept_files(name) and self.kept.record(name) is None:
                self.keep(name)

    # ------------------------------------------------------------------ choices (validation only)
    def best_kid(self, name: str) -> float | None:
        kids = [r["kid"] for r in _jsonl(self.out / name / "metrics.jsonl") if r.get("kid") is not None]
        return min(kids) if kids else None

    def generator(self) -> str | None:
        """The full-data generator with the lowest best mean kernel distance (ties: ADA), its best
        checkpoint; None while no full-data generator under ``--out`` has a quality step."""
        kids = {r: self.best_kid(f"gan_{r}") for r in GAN_RECIPES}
        if all(k is None for k in kids.values()):
            return None
        pick = min(GAN_RECIPES, key=lambda r: (kids[r] is None, kids[r] if kids[r] is not None else 0.0))
        return str((self.out / f"gan_{pick}" / "generator_best.json").resolve())

    def glad_choice(self, ipc: int) -> tuple[str | None, list[dict]]:
        """The GLaD grid point with the best validation score at ``ipc`` and every point's score."""
        rows = []
        for space, layer in self.s["glad_grid"]:
            name = f"glad_ipc{ipc}_{space}_l{layer}"
            summ = _read(self.out / name / "summary.json") or {}
            val = next((v for k, v in summ.items() if k.startswith("best_val_")), None)
            rows.append({"run": name, "space": space, "layer": layer, "best_val": val,
                         "best_iteration": summ.get("best_iteration")})
        scored = [r for r in rows if r["best_val"] is not None]
        return (max(scored, key=lambda r: r["best_val"])["run"] if scored else None), rows

    def glad_point(self, ipc: int) -> dict:
        """``{"space", "layer"}`` of the grid point chosen on validation (TypeError while none is)."""
        choice, rows = self.glad_choice(ipc)
        if choice is None:
            raise TypeError(f"no GLaD grid point at ipc {ipc} has a validation score yet")
        row = next(r for r in rows if r["run"] == choice)
        return {"space": row["space"], "layer": row["layer"]}

    def synset(self, method: str, ipc: int) -> Path:
        return self.out / (f"glad_ipc{ipc}_final" if method == "glad" else f"{method}_ipc{ipc}")

    # ------------------------------------------------------------------ running
    def run(self, jobs: int, only: list[str] | None = None) -> None:
        """Run every unfinished cell (of ``only``, when given) whose dependencies are done, ``jobs`` at a time."""
        unknown = [c for c in only or [] if c not in self.cells]
        if unknown:
            raise SystemExit(f"error: --cells: no cell named {', '.join(unknown)} (cells: {', '.join(self.cells)})")
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        times = _read(self.out / "times.json") or {}
        pending = [c for c in self.cells.values() if not c.done() and (not only or c.name in only)]
        running: dict[str, tuple[subprocess.Popen, float]] = {}
        log_files: dict[str, object] = {}
        failed: list[str] = []
        # the running evaluations' trained networks are kept as they come (a session may end mid-cell)
        stop_watch = self.kept.watch(lambda: [] if self.quick else [
            (n, self.cells[n].out, self.signature(n)) for n in list(running) if n.startswith("eval_")])
        try:
            self._loop(jobs, pending, running, log_files, failed, logs, env, times)
        finally:
            stop_watch()
        if failed:
            print(f"{len(failed)} cells failed: {failed}; rerun the same command to retry them", flush=True)

    def _loop(self, jobs, pending, running, log_files, failed, logs, env, times) -> None:
        while pending or running:
            for name, (proc, t0) in list(running.items()):
                if proc.poll() is not None:
                    del running[name]
                    log_files.pop(name).close()
                    if proc.returncode == 0 and self.cells[name].done():
                        self.kept.stamp(self.cells[name].out, self.signature(name))
                        self.keep(name)
                        times[name] = time.perf_counter() - t0
                        (self.out / "times.json").write_text(json.dumps(times, indent=1))
                        print(f"done   {name} ({times[name]:.0f} s)", flush=True)
                    else:
                        failed.append(name)
                        print(f"FAILED {name} (exit {proc.returncode}; see {logs / (name + '.log')})", flush=True)
            blocked = set(failed)
            ready = [c for c in pending if all(self.cells[d].done() for d in c.deps)]
            pending = [c for c in pending if not any(d in blocked for d in c.deps)]
            for c in ready:
                if len(running) >= jobs:
                    break
                pending.remove(c)
                argv = [sys.executable, "-m", "mtt_fast.cli.main", *[str(a) for a in c.argv()]]
                log = log_files[c.name] = open(logs / f"{c.name}.log", "a")  # noqa: SIM115 - closed when it ends
                log.write(" ".join(argv) + "\n")
                log.flush()
                running[c.name] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO),
                                   time.perf_counter())
                print(f"start  {c.name}", flush=True)
            if not ready and not running and pending:
                print(f"cannot run {[c.name for c in pending]}: a dependency failed", flush=True)
                break
            time.sleep(0.5)

    # ------------------------------------------------------------------ the report
    def gan_record(self, name: str) -> dict:
        d = self.out / name
        recs = _jsonl(d / "metrics.jsonl")
        q = [r for r in recs if "class_consistency" in r]
        best = _read(d / "generator_best.json") or {}
        ps = [r["augment_p"] for r in recs if "augment_p" in r]
        last = q[-1] if q else {}
        return {"run": name, "done": (d / "COMPLETE").is_file(), "steps": recs[-1]["step"] if recs else 0,
                "class_consistency": last.get("class_consistency"), "kid": last.get("kid"),
                "diversity_ratio": last.get("diversity_ratio"), "best_step": best.get("step"),
                "best_kid": self.best_kid(name), "final_p": ps[-1] if ps else None,
                "curve": [{k: r.get(k) for k in ("step", "class_consistency", "kid", "diversity_ratio")} for r in q],
                "p_curve": [(r["step"], r["augment_p"]) for r in recs if "augment_p" in r]}

    def accuracy(self, method: str, ipc: int, arch: str) -> dict | None:
        res = _read(self.out / "eval" / f"{method}_ipc{ipc}" / arch / "results.json")
        if not res or arch not in res.get("results", {}):
            return None
        r = res["results"][arch]
        sel = r.get("lr_selection") or {}
        return {"mean": r["mean"]["accuracy"], "std": r["std"]["accuracy"], "n": len(r.get("runs", [])),
                "lr": r.get("lr"), "lr_chosen_on_val": bool(sel),
                "lr_candidates": [(c["lr"], c["val"].get("accuracy")) for c in sel.get("candidates", [])]}


def _f(v, nd: int = 4, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if pct else f"{v:.{nd}f}"


def report(study: Study, args, times: dict, t_start: float) -> None:
    s, ipcs, archs = study.s, study.ipcs, study.s["eval"]["archs"]
    names = [f"gan_{r}{sfx}" for sfx in ("", "_limited") for r in GAN_RECIPES]
    gans = {n: study.gan_record(n) for n in names}
    stem = "glad_study_quick" if args.quick else "glad_study"
    before = _read(RESULTS / f"{stem}.json") or {}
    for n, rec in gans.items():  # a finished generator whose run directory is not here: its committed record
        old = (before.get("generators") or {}).get(n) or {}
        if not rec["done"] and not rec["steps"] and old.get("done"):
            gans[n] = {**old, "carried_from_commit": old.get("carried_from_commit") or before.get("commit")}
    table = []
    for ipc in ipcs:
        choice, grid = study.glad_choice(ipc)
        for method in ("random", "mtt", "glad"):
            cells = {a: study.accuracy(method, ipc, a) for a in archs}
            unseen = [c["mean"] for a, c in cells.items() if a != "convnet" and c is not None]
            table.append({"method": method, "ipc": ipc, "cells": cells,
                          "unseen_mean": sum(unseen) / len(unseen) if unseen and len(unseen) == len(archs) - 1 else None,
                          **({"glad_choice": choice, "glad_grid": grid} if method == "glad" else {})})
    quick = args.quick
    grids = RESULTS / f"{stem}_grids"
    grids.mkdir(parents=True, exist_ok=True)
    for n in gans:
        pngs = sorted((study.out / n).glob("samples_*.png"))
        if pngs:
            shutil.copyfile(pngs[-1], grids / f"{n}.png")
    import torch

    meta = {"command": " ".join(["python", *sys.argv]), "commit": source_commit(), "torch": torch.__version__,
            "threads_per_cell": 1, "jobs": args.jobs, "quick": quick, "settings": {**s, "distill": {
                str(k): v for k, v in s["distill"].items()}}, "generator_for_glad": study.generator(),
            "cell_seconds": times, "cpu_seconds_total": sum(times.values()),
            "wall_seconds_this_invocation": time.perf_counter() - t_start}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({**meta, "generators": gans, "table": table}, indent=1))

    L = [f"# GLaD study (issue 17): Fashion-MNIST at {s['res']} px, CPU scale" + (" -- QUICK (plumbing only)" if quick else ""),
         "", (f"`{meta['command']}` at commit {meta['commit']}, torch {meta['torch']}, one CPU thread per cell "
              f"({args.jobs} cells at a time); the timed cells took {meta['cpu_seconds_total'] / 60:.1f} minutes of "
              "wall time summed over cells (one thread each; more than their CPU time on a busy machine)."),
         "" if not quick else "\n**--quick: tiny settings that only check that every cell runs; the numbers mean nothing.**",
         "", "## Generators: ADA vs today's recipe, the same steps",
         "", ("Quality in the feature space of the class-consistency classifier (`mtt_fast/generative/quality.py`): "
              "kid = unbiased kernel distance to real validation images, mean over classes (lower is better); "
              "diversity = mean pairwise feature distance within a class, generated / real (1 = as varied as "
              "real). Best = the quality step with the lowest kid (generator_best.json)."), "",
         "| run | recipe | images/class | steps | class consistency % | kid (last) | kid (best, step) | diversity gen/real | final p |",
         "|---|---|---|---|---|---|---|---|---|"]
    for n, g in gans.items():
        if not g["done"] and not g["steps"]:
            continue  # never started
        per = s["limited"] if "limited" in n else (s["gan"]["max_train_per_class"] or "all")
        state = (f" (run at commit {g['carried_from_commit'][:7]}; its directory is not under --out)"
                 if g.get("carried_from_commit") else "" if g["done"] else " (running)")
        recipe = RECIPE_LABEL[n[len("gan_"):].removesuffix("_limited")]
        L.append(f"| {n} | {recipe} | {per} | {g['steps']}{state} | {_f(g['class_consistency'], pct=True)} | "
                 f"{_f(g['kid'])} | {_f(g['best_kid'])} ({g['best_step']}) | {_f(g['diversity_ratio'], 3)} | "
                 f"{_f(g['final_p'], 3)} |")
    L += ["", f"Sample grids (last step, fixed latents): `benchmarks/results/{stem}_grids/`.", "",
          f"### Limited data ({s['limited']} images per class): quality over steps", "",
          "kid / diversity gen/real / class consistency % of each recipe that ran:", ""]
    lim = [r for r in GAN_RECIPES if gans[f"gan_{r}_limited"]["curve"]]
    curves = {r: {c["step"]: c for c in gans[f"gan_{r}_limited"]["curve"]} for r in lim}
    L += ["| step | " + " | ".join(RECIPE_LABEL[r] for r in lim) + " |", "|---|" + "---|" * len(lim)]
    for step in sorted(set().union(*[set(c) for c in curves.values()]) if curves else []):
        L.append(f"| {step} | " + " | ".join(
            f"{_f(curves[r].get(step, {}).get('kid'))} / {_f(curves[r].get(step, {}).get('diversity_ratio'), 3)} / "
            f"{_f(curves[r].get(step, {}).get('class_consistency'), pct=True)}" for r in lim) + " |")
    L += ["", "## Distillation: test accuracy %, mean ± std over the networks of each cell", "",
          ((f"GLaD's generator: `{Path(meta['generator_for_glad']).parent.name}` (lowest best kid of the full-data "
            "generators under --out). " if meta["generator_for_glad"] else
            "GLaD's generator: not chosen yet (no full-data generator under --out). ") + "GLaD row = the "
           "grid point with the best validation score (grid below), run as many iterations as pixel MTT "
           f"({', '.join(str(s['distill'][i]['iterations']) for i in ipcs)}). Unseen = mean over the architectures other "
           "than ConvNet. (lr x): the starting rate chosen for that synset on the validation split "
           f"(`eval --lr-grid {s['eval']['lr_grid']}`); ConvNet trains at the synset's learned rate (random real: 0.01)."),
          "", "| method | ipc | " + " | ".join(archs) + " | unseen mean |", "|---|---|" + "---|" * (len(archs) + 1)]
    for row in table:
        cells = " | ".join("-" if c is None else f"{c['mean']:.2f} ± {c['std']:.2f}"
                           + (f" (lr {c['lr']:g})" if c.get("lr_chosen_on_val") else "") for c in row["cells"].values())
        label = {"random": "random real", "mtt": "MTT (pixels)", "glad": "GLaD (MTT)"}[row["method"]]
        L.append(f"| {label} | {row['ipc']} | {cells} | {_f(row['unseen_mean'], pct=True)} |")
    L += ["", (f"GLaD grid ({s['glad_grid_iterations']} iterations; validation score of each point, the chosen one "
               f"in bold), then the chosen point run as long as pixel MTT (`final`), and MTT itself:"), "",
          "| ipc | space | layer | iterations | best validation | iteration |", "|---|---|---|---|---|---|"]
    for row in table:
        if row["method"] != "glad":
            continue
        for g in row["glad_grid"]:
            mark = "**" if g["run"] == row["glad_choice"] else ""
            L.append(f"| {row['ipc']} | {g['space']} | {g['layer']} | {s['glad_grid_iterations']} | "
                     f"{mark}{_f(g['best_val'], pct=True)}{mark} | {g['best_iteration']} |")
        for name, label in ((f"glad_ipc{row['ipc']}_final", "final"), (f"mtt_ipc{row['ipc']}", "MTT (pixels)")):
            summ = _read(study.out / name / "summary.json") or {}
            val = next((v for k, v in summ.items() if k.startswith("best_val_")), None)
            point = (f"{row['glad_choice'].split('_')[2]} | {row['glad_choice'].split('_l')[-1]}"
                     if label == "final" and row["glad_choice"] else "- | -")
            L.append(f"| {row['ipc']} | {point} | {s['distill'][row['ipc']]['iterations']} ({label}) | "
                     f"{_f(val, pct=True)} | {summ.get('best_iteration', '-')} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(L) + "\n")
    print(json.dumps({"written": str(RESULTS / f"{stem}.md")}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="glad-study")
    ap.add_argument("--quick", action="store_true", help="Tiny settings (a few minutes): checks that every cell runs.")
    ap.add_argument("--jobs", type=int, default=2, help="Cells run at once (one CPU thread each).")
    ap.add_argument("--gan-steps", type=int, default=None, help="Steps of every generator (the shared CPU budget).")
    ap.add_argument("--limited", type=int, default=None, help="Images per class of the limited-data generators.")
    ap.add_argument("--ipcs", default="1,10")
    ap.add_argument("--archs", default=None, help="Comma-separated evaluation architectures (ConvNet first).")
    ap.add_argument("--repeats", type=int, default=None, help="Networks per evaluation cell.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-only", action="store_true", help="Write the report from the finished cells; run nothing.")
    ap.add_argument("--cells", default="", help="Comma-separated cell names: run only these (their dependencies "
                    "must be finished); the report still covers every cell.")
    args = ap.parse_args()
    t_start = time.perf_counter()
    s = json.loads(json.dumps(QUICK if args.quick else FULL, default=list))
    s["distill"] = {int(k): v for k, v in s["distill"].items()}
    s["glad_grid"] = [tuple(x) for x in s["glad_grid"]]
    for key, v in (("gan_steps", args.gan_steps), ("limited", args.limited)):
        if v is not None:
            s[key] = v
    if args.archs:
        s["eval"]["archs"] = [a for a in args.archs.split(",") if a]
    if args.repeats:
        s["eval"]["repeats"] = args.repeats
    study = Study(Path(args.out).resolve(), s, [int(i) for i in args.ipcs.split(",") if i], args.seed, args.quick)
    study.check_finished()
    study.restore()
    study.keep_finished()
    if not args.report_only:
        study.run(max(1, args.jobs), [c for c in args.cells.split(",") if c])
    report(study, args, _read(study.out / "times.json") or {}, t_start)


if __name__ == "__main__":
    main()
