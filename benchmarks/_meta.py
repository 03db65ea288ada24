"""What every benchmark JSON records about the source it ran: the git commit, and whether
the working tree had uncommitted changes.

``MTT_FAST_SOURCE_COMMIT`` overrides the commit: a lent GPU machine gets a copy of the
working tree whose git metadata may be older than the files (``benchmarks/device_run.sh``
sets it from ``.data/commit``, written before the call).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path


#: ``eval --lr-grid`` of the studies' unseen architectures (AlexNet, VGG11, ResNet18): each synset's
#: rate chosen on the validation split per architecture. The learned syn_lr belongs to the ConvNet
#: backbone, and the GLaD reference's fixed rates (0.001 / 0.0001 / 0.001) lost on validation to
#: these at 28 px in the GLaD study's ipc-1 check (README); the backbone keeps its learned rate.
UNSEEN_LR_GRID = "0.001,0.01"


def source_commit() -> str | None:
    """``HEAD`` (``+dirty`` when tracked files differ from it), or the override."""
    override = os.environ.get("MTT_FAST_SOURCE_COMMIT")
    if override:
        return override
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], check=False, stderr=subprocess.DEVNULL).returncode
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty == 1 else "")


def median_seconds(fn, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` after one warm-up call (CPU work:
    nothing to synchronize)."""
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


class KeptCells:
    """Finished study cells kept in the repository between sessions.

    A long CPU study is a set of cells (one ``mtt-fast`` command and its run directory under the
    study's ``out``). The machines it runs on may keep nothing outside the repository from one
    session to the next, so each finished cell's small outputs (the files later cells and the
    report read) are copied to ``folder/<cell>/`` with the cell's command written with ``out`` as
    ``{out}`` (``cell.json``); committed, they let a later session on an empty ``out`` put the
    cell back instead of running it again: only when its command is the same (same settings).

    An evaluation cell still running keeps its trained networks too (``folder/<cell>.partial/``:
    ``networks/*.json``, the run's ``config.yaml`` and the command; :meth:`keep_partial`, kept up
    to date by :meth:`watch`), so a later session resumes it instead of training them again
    (:meth:`restore_partial`; ``mtt-fast eval`` takes the saved networks back).
    """

    #: what a distillation cell keeps: its selected synset and its summary (the choice on validation)
    SYNSET_FILES = ["synset/synset.safetensors", "synset/meta.json", "synset/grid.png", "summary.json"]

    def __init__(self, folder, out) -> None:
        self.folder, self.out = Path(folder), Path(out)

    def signature(self, argv) -> list[str]:
        """``argv`` with this study's ``out`` written as ``{out}`` (independent of the machine)."""
        return [str(a).replace(str(self.out), "{out}") for a in argv]

    def keep(self, name: str, run, files: list[str], argv, extra: dict | None = None) -> None:
        """Copy ``files`` (relative to the finished run directory ``run``, those that exist) and
        the command to ``folder/<name>/``, replacing an earlier copy in one rename."""
        run, tmp = Path(run), self.folder / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in files:
            if (run / f).is_file():
                (tmp / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run / f, tmp / f)
        (tmp / "cell.json").write_text(json.dumps({"argv": self.signature(argv), "commit": source_commit(),
                                                   **(extra or {})}, indent=1) + "\n")
        shutil.rmtree(self.folder / name, ignore_errors=True)
        tmp.rename(self.folder / name)
        shutil.rmtree(self.partial_folder(name), ignore_errors=True)  # finished: its networks are in results

    # -------------------------------------------------------------- an evaluation still running
    def partial_folder(self, name: str) -> Path:
        return self.folder / f"{name}.partial"

    def keep_partial(self, name: str, run, argv) -> int:
        """Copy the trained networks of the unfinished evaluation run ``run`` (``networks/*.json``
        and its ``config.yaml``, with ``out`` as ``{out}``) and its command to
        ``folder/<name>.partial/``, replacing an earlier copy in one rename; how many networks are
        kept (0: the run is finished, has no network yet, or is not an evaluation run)."""
        run = Path(run)
        nets = sorted((run / "networks").glob("*.json"))
        if (run / "COMPLETE").exists() or not nets or not (run / "config.yaml").is_file():
            return 0
        dest = self.partial_folder(name)
        if sorted(p.name for p in (dest / "networks").glob("*.json")) == [p.name for p in nets] \
                and (self.partial_record(name) or {}).get("argv") == self.signature(argv):
            return len(nets)  # nothing new
        tmp = self.folder / f".{name}.partial.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "networks").mkdir(parents=True)
        for f in nets:
            shutil.copyfile(f, tmp / "networks" / f.name)
        (tmp / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(self.out), "{out}"))
        (tmp / "cell.json").write_text(json.dumps({"argv": self.signature(argv), "commit": source_commit()},
                                                  indent=1) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        return len(nets)

    def partial_record(self, name: str) -> dict | None:
        try:
            return json.loads((self.partial_folder(name) / "cell.json").read_text())
        except (OSError, ValueError):
            return None

    def restore_partial(self, name: str, run, argv) -> int:
        """Put the kept networks of ``name`` into ``run`` (absent or empty) with its ``config.yaml``
        when they were made by the command ``argv``: the evaluation then resumes from them. How many
        networks were put back."""
        rec, run = self.partial_record(name), Path(run)
        if rec is None or (run.exists() and any(run.iterdir())):
            return 0
        if rec.get("argv") != self.signature(argv):
            print(f"kept networks of {name} were made with other settings: not restored", flush=True)
            return 0
        src = self.partial_folder(name)
        (run / "networks").mkdir(parents=True, exist_ok=True)
        nets = sorted((src / "networks").glob("*.json"))
        for f in nets:
            shutil.copyfile(f, run / "networks" / f.name)
        (run / "config.yaml").write_text((src / "config.yaml").read_text().replace("{out}", str(self.out)))
        return len(nets)

    def watch(self, running: Callable[[], Iterable[tuple[str, Path, list]]], every: float = 60.0) -> Callable[[], None]:
        """Keep the networks of the evaluations ``running()`` names (``(name, run, argv)``) every
        ``every`` seconds, in a daemon thread; returns the function that stops it after a last pass."""
        stop = threading.Event()

        def one_pass() -> None:
            for name, run, argv in list(running()):
                try:
                    self.keep_partial(name, run, argv)
                except OSError as e:  # a network written while copied: the next pass takes it
                    print(f"keeping the networks of {name} failed this time: {e}", flush=True)

        def loop() -> None:
            while not stop.wait(every):
                one_pass()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()

        def finish() -> None:
            stop.set()
            thread.join()
            one_pass()
            for partial in self.folder.glob("*.partial"):  # a copy that raced the end of its cell
                name = partial.name.removesuffix(".partial")
                full, part = self.record(name), self.partial_record(name)
                if full is not None and part is not None and full.get("argv") == part.get("argv"):
                    shutil.rmtree(partial, ignore_errors=True)

        return finish

    def record(self, name: str) -> dict | None:
        """The kept ``cell.json`` of ``name`` (None: not kept)."""
        try:
            return json.loads((self.folder / name / "cell.json").read_text())
        except (OSError, ValueError):
            return None

    def restore(self, name: str, run, files: list[str], argv) -> bool:
        """Put the kept ``files`` of ``name`` back into ``run`` and mark it finished (``COMPLETE``)
        when a copy exists and its command equals ``argv``; whether it was restored."""
        rec = self.record(name)
        if rec is None:
            return False
        if rec.get("argv") != self.signature(argv):
            print(f"kept {name} was made with other settings: not restored (it will run)", flush=True)
            return False
        run = Path(run)
        for f in files:
            if (self.folder / name / f).is_file():
                (run / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.folder / name / f, run / f)
        (run / "COMPLETE").write_text(f"restored from {self.folder / name} (made at commit {rec.get('commit')})\n")
        self.stamp(run, argv)
        return True

    # -------------------------------------------------------------- which command made a run under out
    @staticmethod
    def stamp_file(run) -> Path:
        """``<run>.cell.json`` beside the run directory (the run itself belongs to mtt-fast)."""
        run = Path(run)
        return run.parent / f"{run.name}.cell.json"

    def stamp(self, run, argv) -> None:
        """Record that the finished run ``run`` was made by ``argv`` (see :meth:`check_finished`)."""
        f = self.stamp_file(run)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".{f.name}.tmp")
        tmp.write_text(json.dumps({"argv": self.signature(argv)}, indent=1) + "\n")
        tmp.replace(f)

    def check_finished(self, cells: Iterable[tuple[str, Path, list]]) -> None:
        """Refuse to go on when a finished run under ``out`` was made with other settings.

        A study skips a cell whose run directory is finished (``COMPLETE``). That is only right
        when the run was made by the command the study would give it now: a study rerun on the
        same ``--out`` with other settings would otherwise report the old runs under the new
        settings. ``cells``: ``(name, run, argv)``. A finished run stamped with another command
        stops the study (``SystemExit``, one line per run: the first differing argument); one
        without a stamp (finished before stamps existed, or by hand) is taken as this study's and
        stamped.
        """
        bad = []
        for name, run, argv in cells:
            if not (Path(run) / "COMPLETE").is_file():
                continue
            try:
                made = json.loads(self.stamp_file(run).read_text())["argv"]
            except FileNotFoundError:
                self.stamp(run, argv)
                continue
            except (OSError, ValueError, KeyError, TypeError):
                made = None
            now = self.signature(argv)
            if made != now:
                bad.append(f"{run}: finished by another command than this study's ({_first_difference(made, now)})")
        if bad:
            raise SystemExit("error: " + "\nerror: ".join(bad) + "\nchoose another --out, or delete those runs "
                             "(and their .cell.json) to run them again")


def _first_difference(old: list[str] | None, new: list[str]) -> str:
    """Where two commands first differ, as ``then ... / now ...``."""
    if not isinstance(old, list):
        return "its .cell.json is unreadable"
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a != b:
            where = old[i - 1] if i and str(old[i - 1]).startswith("--") else f"argument {i}"
            return f"{where} {a!r} then, {b!r} now"
    return f"{len(old)} arguments then, {len(new)} now"
