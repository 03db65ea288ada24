"""The one distillation loop every method plugs into (:mod:`mtt_fast.distill.methods`).

Each iteration asks the method's objective for ``d loss / d images`` and ``d loss / d syn_lr``,
back-propagates the first into the parameterization (pixels, or a generator's latents) and
steps both optimizers. Every ``eval_it`` iterations the synset is evaluated on the VALIDATION
split and the best one is kept (selection never looks at the test split). The same in-loop
networks are also scored on the test split, only to report the labelled "max over
evaluations" test number (``summary.json`` ``max_test_over_evals``) that the MTT reference
publishes; it never selects anything.

The run directory holds ``config.yaml``, ``metrics.jsonl``, ``checkpoint.safetensors`` +
``checkpoint.json`` (resume state), ``synset/`` (best by validation), ``synset_last/``,
``summary.json``. A method that optimizes nothing (random, herding, kcenter) writes ``synset/`` only.

Issue 18's options (each off by default):

* ``--soft-labels``: the labels are ``[n, K]`` logits (the student's target is their softmax),
  initialised from the labelling expert (:mod:`mtt_fast.distill.soft`) and, for methods that
  optimize, learned through the engine's ``grad_labels`` by SGD (``lr_y``, momentum 0.9). They are
  checkpointed with their optimizer state and saved in the synset (``soft_labels``).
* ``--skip-loss-above X``: an iteration whose matching loss exceeds X updates nothing (images,
  syn_lr, labels, EMA); its metrics line says ``skipped: true``. Its random draws were made, so a
  resumed run replays the same draws.
* ``--ema-images D``: after every applied update, ``ema = D * ema + (1 - D) * current`` for the
  images (and soft labels). Every evaluation scores both the raw set and the EMA set on
  validation with the same seeds; whichever is best over the run is ``synset/`` (its meta says
  ``ema: true`` or false; ``summary.json`` says ``selected``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from mtt_fast import distributed
from mtt_fast.augment import DSAConfig
from mtt_fast.distill.config import LABEL_MOMENTUM, DistillConfig
from mtt_fast.distill.registry import method_class
from mtt_fast.errors import UserError
from mtt_fast.evaluate.metrics import headline_metric
from mtt_fast.evaluate.protocol import EvalConfig, evaluate_arch
from mtt_fast.evaluate.selection import max_test_over_evals
from mtt_fast.experts.store import TrajectoryStore
from mtt_fast.match.parallel import RankShare
from mtt_fast.io import (
    append_jsonl,
    load_tensors,
    read_json,
    read_jsonl,
    save_tensors,
    write_json,
    write_text,
)
from mtt_fast.memory import format_peak_memory, peak_memory
from mtt_fast.optim_state import load_optimizer_state, optimizer_state
from mtt_fast.runtime import differences, runtime
from mtt_fast.synth import Synset

CHECKPOINT = "checkpoint.safetensors"


def _metrics_upto(path: Path, iteration: int) -> None:
    """Drop metric lines of iterations at or after ``iteration`` (they rerun); 0 empties the file."""
    if not path.exists() and iteration == 0:
        return
    keep = [r for r in read_jsonl(path) if r.get("iteration", -1) < iteration]
    write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def checkpoint_info(path: Path) -> dict | None:
    """The iteration / best / method state stored in a checkpoint's metadata (None: an older checkpoint)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise UserError(f"checkpoint {path} is corrupt or not a safetensors file: {e}") from None
    return json.loads(meta["checkpoint"]) if "checkpoint" in meta else None


class Distiller:
    """One distillation run over a trajectory store, writing into ``out``.

    Args:
        store: the experts (their architecture is the student's; mtt/glad match their trajectories).
        bundle: the dataset (``mtt_fast.data.DatasetBundle``): train for initialization, val for
            selection, test for the labelled max-over-evaluations number.
        cfg: the run's settings, with the method's learning-rate defaults resolved.
        out: the run directory (its ``config.yaml`` is written by the caller).
    """

    def __init__(self, store: TrajectoryStore, bundle, cfg: DistillConfig, out: str | Path, *,
                 device: torch.device | str = "cpu", progress: bool = True, log: Callable[[str], None] = print,
                 on_checkpoint: Callable[[], None] = lambda: None):
        cfg = cfg.resolved()
        self.on_checkpoint = on_checkpoint
        self.store, self.bundle, self.cfg, self.out = store, bundle, cfg, Path(out)
        self.device, self.progress, self.log = torch.device(device), progress, log
        self.dsa = DSAConfig.from_dict(cfg.dsa)
        cls = method_class(cfg.method)
        cls.validate(cfg)
        self._expert = None
        self.method = cls(self)
        self.metric = headline_metric(bundle.num_classes)
        self.val = bundle.split("val")
        self.test = bundle.split("test")
        self.eval_cfg = EvalConfig(epochs=cfg.evaluation.eval_epochs, dsa=cfg.dsa, dsa_impl=cfg.dsa_impl,
                                   width=store.meta["width"], depth=store.meta["depth"])

    def expert_network(self):
        """The labelling expert (:class:`mtt_fast.distill.soft.ExpertNetwork`), built once."""
        if self._expert is None:
            from mtt_fast.distill.soft import ExpertNetwork

            self._expert = ExpertNetwork(self.store, self.device)
        return self._expert

    # -- state -------------------------------------------------------------------------
    def _fresh_state(self) -> None:
        cfg = self.cfg
        self.method.reset()
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.param, self.labels = self.method.make_param(self.gen)
        self.soft, self.opt_y = None, None
        if cfg.soft_labels:
            self.soft = self.expert_network().logits(self.param.images()).to(self.device).requires_grad_(True)
            self.opt_y = torch.optim.SGD([self.soft], lr=cfg.lr_y, momentum=LABEL_MOMENTUM)
        self.ema_images = self.ema_soft = None
        if cfg.ema_images is not None and self.method.optimizes:
            self.ema_images = self.param.images().detach().clone()
            self.ema_soft = None if self.soft is None else self.soft.detach().clone()
        lr0 = cfg.lr_teacher if cfg.lr_teacher is not None else self.store.expert_lr
        self.syn_lr = torch.tensor(float(lr0), device=self.device).requires_grad_(True)
        self.opt_lr = self.method.lr_optimizer(self.syn_lr)
        self.iteration = 0
        self.best = {"iteration": None, "value": -math.inf}
        self._warned_lr = False

    def _save_checkpoint(self) -> None:
        """One file: the tensors, and the iteration / best / method state in its metadata, so a kill
        can never leave the two out of step (older runs also wrote ``checkpoint.json``)."""
        t = {**self.param.state_tensors(), "labels": self.labels, "syn_lr": self.syn_lr.detach(),
             "generator": self.gen.get_state()}
        t.update(optimizer_state("lr", self.opt_lr))
        if self.soft is not None:
            t["soft_labels"] = self.soft.detach()
            t.update(optimizer_state("y", self.opt_y))
        if self.ema_images is not None:
            t["ema_images"] = self.ema_images
            if self.ema_soft is not None:
                t["ema_soft_labels"] = self.ema_soft
        info = {"iteration": self.iteration, "best": self.best, "runtime": runtime(self.device),
                **self.method.checkpoint_extra()}
        if distributed.is_main():  # under torchrun every rank holds the same state; rank 0 writes it
            save_tensors(self.out / CHECKPOINT, t, metadata={"checkpoint": json.dumps(info)})
            (self.out / "checkpoint.json").unlink(missing_ok=True)
        self.on_checkpoint()

    def _read_checkpoint(self) -> tuple[dict, dict] | None:
        """``(info, tensors)`` of the run's checkpoint, or None when there is none."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            return None
        info = checkpoint_info(path)
        if info is None:  # written before the metadata held it
            info = read_json(self.out / "checkpoint.json", what="checkpoint")
        return info, load_tensors(path, what="checkpoint")

    def _load_checkpoint(self) -> bool:
        path = self.out / CHECKPOINT
        # under torchrun rank 0 reads the checkpoint (whatever world size wrote it) and sends it
        found = distributed.broadcast_object(self._read_checkpoint() if distributed.is_main() else None)
        if found is None:
            return False
        info, t = found
        self.method.check_resume(info)
        self._fresh_state()
        wanted = [*self.param.learnables(), "syn_lr", "labels", "generator"]
        wanted += ["soft_labels"] if self.soft is not None else []
        wanted += ["ema_images"] if self.ema_images is not None else []
        wanted += ["ema_soft_labels"] if self.ema_soft is not None else []
        missing = [k for k in wanted if k not in t]
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)}: it was written by another "
                            f"kind of run; pass --overwrite to start again")
        self.param.load_state_tensors(t)
        with torch.no_grad():
            self.syn_lr.copy_(t["syn_lr"].to(self.device))
        self.labels = t["labels"].to(self.device)
        self.gen.set_state(t["generator"])
        load_optimizer_state("lr", self.opt_lr, t)
        if self.soft is not None:
            with torch.no_grad():
                self.soft.copy_(t["soft_labels"].to(self.device))
            load_optimizer_state("y", self.opt_y, t)
        if self.ema_images is not None:
            self.ema_images = t["ema_images"].to(self.device)
            if self.ema_soft is not None:
                self.ema_soft = t["ema_soft_labels"].to(self.device)
        self.iteration, self.best = int(info["iteration"]), info["best"]
        changed = differences(info.get("runtime"), self.device)
        if changed:
            self.log(f"warning: resuming {self.out} with another runtime ({changed}): the result will differ in "
                     f"its last bits from an uninterrupted run")
        return True

    # -- the synset ----------------------------------------------------------------------
    def synset(self, ema: bool = False) -> Synset:
        """The current synthetic set (``ema``: its exponential moving average instead)."""
        cfg, b = self.cfg, self.bundle
        meta = {
            "method": cfg.method,
            "ipc": cfg.ipc,
            "classes": list(b.classes),
            "dataset": self.store.dataset_meta,
            "normalization": {"mean": list(b.mean), "std": list(b.std)},
            "arch": self.store.arch,
            "width": self.store.meta["width"],
            "depth": self.store.meta["depth"],
            "res": b.res,
            "channels": b.channels,
            "iteration": self.iteration,
            "distill": cfg.flat(),
            "buffer": str(self.store.path.resolve()),
            "runtime": runtime(self.device),
            **self.param.meta(),
        }
        if cfg.soft_labels:
            meta["soft_label_source"] = {"expert": self.expert_network().what, "learned": self.method.optimizes}
        if self.ema_images is not None:
            meta["ema"] = ema
        syn_lr = float(self.syn_lr.item()) if self.method.optimizes else None
        images, soft = self._current(ema)
        soft = None if soft is None else soft.detach().cpu().clone()
        return Synset(images.detach().cpu().clone(), self.labels.cpu().clone(), syn_lr, meta, soft_labels=soft)

    def _current(self, ema: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The images and soft labels (None: hard labels) of the raw or the EMA set."""
        if ema:
            return self.ema_images, self.ema_soft
        return self.param.images(), (None if self.soft is None else self.soft.detach())

    def save_synset(self, out: Path, ema: bool = False) -> None:
        """The synset (rendered images) plus what the parameterization keeps beside it (the raw set's)."""
        if not distributed.is_main():
            return
        self.synset(ema).save(out)
        if not ema:
            self.param.save_extra(out)

    # -- pieces --------------------------------------------------------------------------
    def evaluate_val(self, ema: bool = False) -> dict:
        """Train ``eval_repeats`` backbone networks on the current (or EMA) synset; score on val (and test)."""
        if not self.syn_lr.item() > 0:
            raise self._diverged(f"syn_lr is {self.syn_lr.item():.4g} at iteration {self.iteration}: no network can "
                                 f"be trained on the synset with it (keep --syn-lr-min above 0)")
        images, soft = self._current(ema)  # soft labels: soft cross-entropy against softmax(logits)
        try:
            return evaluate_arch(self.store.arch, images, self.labels, self.val, soft_labels=soft,
                                 lr=float(self.syn_lr.item()), cfg=self.eval_cfg,
                                 repeats=self.cfg.evaluation.eval_repeats, seed=self.cfg.seed + 1000 + self.iteration,
                                 device=self.device, extra={"test": self.test})
        except UserError:
            raise self._diverged(f"training on the synset diverged at iteration {self.iteration} "
                                 f"(syn_lr {self.syn_lr.item():.4g})") from None

    def _diverged(self, what: str) -> UserError:
        return UserError(f"{what}; {self.method.lr_hint()}; the best synset so far is kept in {self.out / 'synset'}")

    def step(self) -> dict:
        """One distillation iteration; returns its metrics line."""
        t0 = time.perf_counter()
        objective = self.method.objective
        labels = self.labels if self.soft is None else self.soft.detach()
        r = objective(self.param.images(), labels, self.syn_lr, self.gen, iteration=self.iteration)
        if distributed.active():  # each rank's gradient covers its own images: add them up
            RankShare.sum(r.grad_images)
            if r.grad_labels is not None:
                RankShare.sum(r.grad_labels)
        loss = float(r.loss)
        bad = not math.isfinite(loss) or not torch.isfinite(r.grad_images).all() or not math.isfinite(float(r.grad_lr))
        if bad or (r.grad_labels is not None and not torch.isfinite(r.grad_labels).all()):
            raise self._diverged(f"the {objective.loss_name} became {loss} at iteration {self.iteration}")
        rec = {"iteration": self.iteration, "loss": loss}
        limit = self.cfg.trajectory.skip_loss_above
        if limit is not None and loss > limit:
            rec.update({"skipped": True, "syn_lr": float(self.syn_lr.item()), **r.extra})
        else:
            self.param.backward(r.grad_images)
            self._same_on_every_rank()
            self.syn_lr.grad = r.grad_lr.reshape(()).to(self.syn_lr.dtype)
            self.param.step()
            self.opt_lr.step()
            self.syn_lr.grad = None
            if self.soft is not None:
                self.soft.grad = r.grad_labels.to(self.soft.dtype)
                self.opt_y.step()
                self.soft.grad = None
            if not self.param.all_finite() or not math.isfinite(self.syn_lr.item()) or (
                    self.soft is not None and not torch.isfinite(self.soft).all()):
                raise self._diverged(f"the synthetic set or syn_lr became NaN/inf at iteration {self.iteration}")
            rec.update({"syn_lr": float(self.syn_lr.item()), **r.extra})
            rec.update(self._keep_syn_lr_positive())
            self._update_ema()
        rec["seconds"] = time.perf_counter() - t0
        rec.update(peak_memory(self.device))
        return rec

    def _same_on_every_rank(self) -> None:
        """Under torchrun: rank 0's gradients of the learnables for all (a generator's backward on a
        GPU need not give the same bits on every rank; the replicas must never drift apart)."""
        if not distributed.active():
            return
        for leaf in self.param.learnables().values():
            if leaf.grad is not None:
                distributed.broadcast_(leaf.grad)

    def _update_ema(self) -> None:
        """``ema = D * ema + (1 - D) * current`` for the images and soft labels (``--ema-images D``)."""
        if self.ema_images is None:
            return
        d = float(self.cfg.ema_images)
        with torch.no_grad():
            self.ema_images.mul_(d).add_(self.param.images().detach(), alpha=1.0 - d)
            if self.ema_soft is not None:
                self.ema_soft.mul_(d).add_(self.soft.detach(), alpha=1.0 - d)

    def _keep_syn_lr_positive(self) -> dict:
        """Clamp syn_lr at ``syn_lr_min`` (a negative step size trains the student backwards) and say
        so once per run; returns what the metrics line records about it."""
        floor, value = self.cfg.syn_lr_min, float(self.syn_lr.item())
        if floor > 0 and value < floor:
            with torch.no_grad():
                self.syn_lr.fill_(floor)
            if not self._warned_lr:
                self.log(f"warning: syn_lr fell to {value:.4g} at iteration {self.iteration}; held at --syn-lr-min "
                         f"{floor:g} (a smaller --lr-lr keeps it from getting there)")
            self._warned_lr = True
            return {"syn_lr": floor, "syn_lr_clamped": value}
        if value <= 0 and not self._warned_lr:
            self.log(f"warning: syn_lr is {value:.4g} at iteration {self.iteration} (--syn-lr-min 0): the student "
                     f"now trains backwards; lower --lr-lr")
            self._warned_lr = True
        return {}

    def _evaluate(self, metrics: Path, bar) -> None:
        it = self.iteration
        ev = self.evaluate_val()
        value = ev["mean"][self.metric]
        test = ev["extra"]["test"]
        line = {"iteration": it, "val": ev["mean"], "val_std": ev["std"], "test": test["mean"], "test_std": test["std"]}
        candidates = [(value, False)]
        if self.ema_images is not None:
            ev_ema = self.evaluate_val(ema=True)
            t_ema = ev_ema["extra"]["test"]
            line["ema"] = {"val": ev_ema["mean"], "val_std": ev_ema["std"], "test": t_ema["mean"], "test_std": t_ema["std"]}
            candidates.append((ev_ema["mean"][self.metric], True))
        if distributed.is_main():
            append_jsonl(metrics, line)
        for v, ema in candidates:  # the raw set wins a tie
            if v > self.best["value"]:
                self.best = {"iteration": it, "value": v, **({"ema": ema} if self.ema_images is not None else {})}
                self.save_synset(self.out / "synset", ema=ema)
        bar.set_postfix({f"val_{self.metric}": f"{value:.1f}", "best": f"{self.best['value']:.1f}"})

    # -- the run -------------------------------------------------------------------------
    def run(self) -> dict:
        """Run (or resume) to ``cfg.iterations``; returns the summary written to ``summary.json``."""
        if not self.method.optimizes:
            self._fresh_state()
            self.save_synset(self.out / "synset")
            return {"method": self.cfg.method, "images": len(self.labels), "soft_labels": self.soft is not None}
        cfg = self.cfg
        metrics = self.out / "metrics.jsonl"
        if self._load_checkpoint():
            self.log(f"resuming from iteration {self.iteration} in {self.out}")
        else:
            self._fresh_state()
        if distributed.is_main():
            _metrics_upto(metrics, self.iteration)  # lines a killed run wrote after its last checkpoint
        t = cfg.trajectory
        self.log(f"distilling: method {cfg.method}, engine {t.engine}, ipc {cfg.ipc}, N={cfg.syn_steps}, "
                 f"M={t.expert_epochs}, T+={t.max_start_epoch}, device {self.device}")
        bar = tqdm(total=cfg.iterations, initial=self.iteration, desc="distill", disable=not self.progress)
        first, every = self.iteration, cfg.evaluation.eval_it
        while True:
            if self.iteration % every == 0 or self.iteration == cfg.iterations:
                self._evaluate(metrics, bar)
            if self.iteration == cfg.iterations:
                break
            rec = self.step()
            info = rec.get("engine_info") or {}
            if self.iteration == first:
                self.log(f"iteration {rec['iteration']}: engine {t.engine}, {rec['seconds']:.2f} s, "
                         f"{format_peak_memory(rec)}")
                if "kept_steps" in info:
                    self.log(f"engine auto: keeps the graphs of {info['kept_steps']} of {info['steps']} steps "
                             f"(estimate {info['estimate_bytes'] / 2**20:.0f} MiB, budget "
                             f"{info['memory_budget'] / 2**20:.0f} MiB, {info['budget_rule']})")
            if info.get("budget_rule", "given") != "given":  # the default budget follows the free memory: a
                info.pop("memory_budget", None)  # log line, not a metric (metrics replay identically on resume)
                info["budget_rule"] = "default"
            if distributed.is_main():
                append_jsonl(metrics, rec)
            self.iteration += 1
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", syn_lr=f"{rec['syn_lr']:.4g}", mem=format_peak_memory(rec, short=True))
            if self.iteration % cfg.checkpoint_it == 0 or self.iteration % every == 0:
                self._save_checkpoint()
        bar.close()
        self.save_synset(self.out / "synset_last")
        if self.ema_images is not None:
            self.save_synset(self.out / "synset_last_ema", ema=True)
        self._save_checkpoint()
        if self.best["iteration"] is None:
            raise UserError(f"no synset was selected in {self.out}: the validation {self.metric} was NaN at every "
                            f"evaluation (does every class have validation images? see `mtt-fast data stats`)")
        return self._summary(metrics)

    def _summary(self, metrics: Path) -> dict:
        """``summary.json``, written by rank 0 (it alone has the metrics), the same dict on every rank."""
        summary = self._write_summary(metrics) if distributed.is_main() else None
        return distributed.broadcast_object(summary)

    def _write_summary(self, metrics: Path) -> dict:
        summary = {"best_iteration": self.best["iteration"], f"best_val_{self.metric}": self.best["value"],
                   "iterations": self.cfg.iterations, "final_syn_lr": float(self.syn_lr.item())}
        if self.ema_images is not None:
            summary["selected"] = "ema" if self.best.get("ema") else "raw"
        skipped = sum(1 for r in read_jsonl(metrics) if r.get("skipped"))
        if self.cfg.trajectory.skip_loss_above is not None:
            summary["skipped_iterations"] = skipped
        top = max_test_over_evals(read_jsonl(metrics), self.metric)
        if top is not None:
            summary["max_test_over_evals"] = top
            self.log(f"max over the in-loop evaluations of the TEST split: {self.metric} {top['value']:.2f} at "
                     f"iteration {top['iteration']} (selection on the test set, for comparison with "
                     f"published MTT tables only; the selected synset is synset/, chosen on validation)")
        write_json(self.out / "summary.json", summary)
        return summary
