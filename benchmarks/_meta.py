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
import time
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
        return True
