"""MTT distillation (Cazenavette et al. 2022; the paper's Algorithm 3) on pixels.

Each iteration: pick an expert and a start epoch t < T+, start the student at theta*_t,
take N SGD steps with the learnable ``syn_lr`` on augmented minibatches of the synthetic
images, and minimize ``||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2`` w.r.t.
the images and ``syn_lr`` (SGD with momentum 0.5 on both). Every ``eval_it`` iterations the
synset is evaluated on the VALIDATION split and the best one is kept (selection never looks
at the test split). The same in-loop networks are also scored on the test split, only to
report the labelled "max over evaluations" test number (``summary.json``
``max_test_over_evals``) that the MTT reference publishes; it never selects anything.

The run directory holds ``config.yaml``, ``metrics.jsonl``, ``checkpoint.safetensors`` +
``checkpoint.json`` (resume state), ``synset/`` (best by validation), ``synset_last/``.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from mtt_fast.augment import DSAConfig, uses_fused
from mtt_fast.errors import UserError
from mtt_fast.evaluate.metrics import headline_metric
from mtt_fast.evaluate.protocol import EvalConfig, evaluate_arch
from mtt_fast.evaluate.selection import max_test_over_evals
from mtt_fast.experts.store import TrajectoryStore
from mtt_fast.io import (
    append_jsonl,
    load_tensors,
    read_json,
    read_jsonl,
    save_tensors,
    write_json,
    write_text,
)
from mtt_fast.match import ENGINES, Student, plan_steps
from mtt_fast.memory import format_peak_memory, peak_memory
from mtt_fast.synth import Synset, init_noise, init_real
from mtt_fast.synth.params import (
    Parameterization,
    PixelParam,
    load_optimizer_state,
    optimizer_state,
)


@dataclass
class DistillConfig:
    """Settings of a distillation run (names follow the MTT reference's flags)."""

    method: str = "mtt"
    ipc: int = 10
    syn_steps: int = 20
    expert_epochs: int = 2
    max_start_epoch: int = 20
    iterations: int = 5000
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_teacher: float | None = None
    momentum: float = 0.5
    batch_syn: int | None = None
    pix_init: str = "real"
    # GLaD (method "glad"): the generator and its latent parameterization (mtt_fast/synth/latent.py)
    generator: str | None = None
    space: str = "wp"
    layer: int = -1
    avg_w: bool = False
    lr_w: float = 1.0
    lr_g: float = 0.01
    learn_g: bool = False
    g_batch: int = 100
    # DD (method "dd"): initializations per iteration and the real minibatch they are scored on
    dd_models: int = 4
    batch_real: int = 256
    engine: str = "adjoint"
    offload_history: bool = False
    dsa: dict = field(default_factory=lambda: asdict(DSAConfig()))
    dsa_impl: str = "auto"
    block_impl: str = "auto"
    eval_it: int = 100
    eval_epochs: int = 300
    eval_repeats: int = 1
    checkpoint_it: int = 10
    seed: int = 0


def _metrics_upto(path: Path, iteration: int) -> None:
    """Drop metric lines of iterations at or after the checkpoint we resume from (they rerun)."""
    keep = [r for r in read_jsonl(path) if r.get("iteration", -1) < iteration]
    write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


class MTTDistiller:
    """One MTT distillation run over a trajectory store, writing into ``out``."""

    #: whether iterations read expert trajectories (DD only reads the store's architecture)
    uses_trajectories = True

    def __init__(self, store: TrajectoryStore, bundle, cfg: DistillConfig, out: str | Path, *,
                 device: torch.device | str = "cpu", progress: bool = True, log: Callable[[str], None] = print):
        self.store, self.bundle, self.cfg, self.out = store, bundle, cfg, Path(out)
        self.device, self.progress, self.log = torch.device(device), progress, log
        if cfg.engine not in ENGINES:
            raise UserError(f"--engine {cfg.engine}: available engines are {', '.join(ENGINES)}")
        if self.uses_trajectories:
            store.check_epochs(cfg.expert_epochs, cfg.max_start_epoch)
        self.engine = ENGINES[cfg.engine]
        if cfg.offload_history:
            if cfg.engine == "full":
                raise UserError("--offload-history needs --engine adjoint or tesla (full keeps no history)")
            self.engine = functools.partial(self.engine, offload=True)
        if cfg.block_impl == "fused":
            from mtt_fast.ops import block as fused_block

            if not fused_block.fused_available(self.device, torch.float32):
                raise UserError(f"--block-impl fused: {fused_block.unavailable_reason(self.device, torch.float32)}")
        self.student = Student.of(store.build_network(block_impl=cfg.block_impl).to(self.device), aug_impl=cfg.dsa_impl)
        self.dsa = DSAConfig.from_dict(cfg.dsa)
        self.metric = headline_metric(bundle.num_classes)
        self.val = bundle.split("val")
        # scored with the same in-loop networks, only for the labelled max-over-evaluations
        # number (selection on the test set, as the MTT reference reports); never selects
        self.test = bundle.split("test")
        self.eval_cfg = EvalConfig(epochs=cfg.eval_epochs, dsa=cfg.dsa, dsa_impl=cfg.dsa_impl, width=store.meta["width"], depth=store.meta["depth"])

    # -- state -------------------------------------------------------------------------
    def _fresh_state(self) -> None:
        cfg = self.cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.param = self._make_param()
        lr0 = cfg.lr_teacher if cfg.lr_teacher is not None else self.store.expert_lr
        self.syn_lr = torch.tensor(float(lr0), device=self.device).requires_grad_(True)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=cfg.lr_lr, momentum=cfg.momentum)
        self.iteration = 0
        self.best = {"iteration": None, "value": -math.inf}

    def _make_param(self) -> Parameterization:
        """Pixels (MTT); :class:`mtt_fast.distill.glad.GLaDDistiller` overrides this."""
        cfg = self.cfg
        if cfg.pix_init == "real":
            x, y = init_real(self.bundle.split("train"), cfg.ipc, self.gen)
        elif cfg.pix_init == "noise":
            x, y = init_noise(self.bundle.num_classes, cfg.ipc, (self.bundle.channels, self.bundle.res, self.bundle.res), self.gen)
        else:
            raise UserError(f"--pix-init {cfg.pix_init}: choose real or noise")
        self.labels = y.to(self.device)
        return PixelParam(x.to(self.device), cfg.lr_img, cfg.momentum)

    def _save_checkpoint(self) -> None:
        t = {**self.param.state_tensors(), "labels": self.labels, "syn_lr": self.syn_lr.detach(),
             "generator": self.gen.get_state()}
        t.update(optimizer_state("lr", self.opt_lr))
        save_tensors(self.out / "checkpoint.safetensors", t)
        write_json(self.out / "checkpoint.json", {"iteration": self.iteration, "best": self.best, **self._checkpoint_extra()})

    def _checkpoint_extra(self) -> dict:
        return {}

    def _check_resume(self, info: dict) -> None:
        """Refuse a checkpoint that does not belong to this run's inputs (GLaD: the generator)."""

    def _load_checkpoint(self) -> bool:
        if not (self.out / "checkpoint.json").is_file():
            return False
        info = read_json(self.out / "checkpoint.json", what="checkpoint")
        self._check_resume(info)
        t = load_tensors(self.out / "checkpoint.safetensors", what="checkpoint")
        self._fresh_state()
        missing = [k for k in (*self.param.learnables(), "syn_lr", "labels", "generator") if k not in t]
        if missing:
            raise UserError(f"{self.out / 'checkpoint.safetensors'} lacks {', '.join(missing)}: it was written by another "
                            f"kind of run; pass --overwrite to start again")
        self.param.load_state_tensors(t)
        with torch.no_grad():
            self.syn_lr.copy_(t["syn_lr"].to(self.device))
        self.labels = t["labels"].to(self.device)
        self.gen.set_state(t["generator"])
        load_optimizer_state("lr", self.opt_lr, t)
        self.iteration, self.best = int(info["iteration"]), info["best"]
        _metrics_upto(self.out / "metrics.jsonl", self.iteration)
        return True

    # -- pieces --------------------------------------------------------------------------
    def synset(self) -> Synset:
        meta = {
            "method": self.cfg.method,
            "ipc": self.cfg.ipc,
            "classes": list(self.bundle.classes),
            "dataset": self.store.dataset_meta,
            "normalization": {"mean": list(self.bundle.mean), "std": list(self.bundle.std)},
            "arch": self.store.arch,
            "width": self.store.meta["width"],
            "depth": self.store.meta["depth"],
            "res": self.bundle.res,
            "channels": self.bundle.channels,
            "iteration": self.iteration,
            "distill": asdict(self.cfg),
            "buffer": str(self.store.path.resolve()),
            **self.param.meta(),
        }
        return Synset(self.param.images().detach().cpu().clone(), self.labels.cpu().clone(), float(self.syn_lr.item()), meta)

    def save_synset(self, out: Path) -> None:
        """The synset (rendered images) plus what the parameterization keeps beside it."""
        self.synset().save(out)
        self.param.save_extra(out)

    def evaluate_val(self) -> dict:
        """Train ``eval_repeats`` backbone networks on the current synset; score on val."""
        try:
            return evaluate_arch(self.store.arch, self.param.images(), self.labels, self.val,
                                 lr=float(self.syn_lr.item()), cfg=self.eval_cfg, repeats=self.cfg.eval_repeats,
                                 seed=self.cfg.seed + 1000 + self.iteration, device=self.device,
                                 extra={"test": self.test})
        except UserError:
            raise self._diverged(f"training on the synset diverged at iteration {self.iteration} "
                                 f"(syn_lr {self.syn_lr.item():.4g})") from None

    def _lr_hint(self) -> str:
        return f"lower --lr-img (now {self.cfg.lr_img:g}) or --lr-lr (now {self.cfg.lr_lr:g})"

    def _diverged(self, what: str) -> UserError:
        return UserError(f"{what}; {self._lr_hint()}; the best synset so far is kept in {self.out / 'synset'}")

    def step(self) -> dict:
        """One distillation iteration; returns its metrics line."""
        cfg, t0 = self.cfg, time.perf_counter()
        k = int(torch.randint(self.store.num_experts, (1,), generator=self.gen))
        start_epoch = int(torch.randint(cfg.max_start_epoch, (1,), generator=self.gen))
        start, target = (s.to(self.device) for s in self.store.snapshots(k, [start_epoch, start_epoch + cfg.expert_epochs]))
        n = len(self.labels)
        images = self.param.images()
        aug_device = "cpu" if uses_fused(images, self.student.aug_impl) else self.device
        plan = plan_steps(n, tuple(images.shape[1:]), cfg.syn_steps, cfg.batch_syn or n, self.dsa, self.gen,
                          device=self.device, dtype=images.dtype, aug_device=aug_device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        res = self.engine(self.student, start, target, images, self.labels, self.syn_lr, plan)
        loss = float(res.loss)
        if not math.isfinite(loss) or not torch.isfinite(res.grad_images).all() or not math.isfinite(float(res.grad_lr)):
            raise self._diverged(f"the matching loss became {loss} at iteration {self.iteration}")
        self.param.backward(res.grad_images)
        self.syn_lr.grad = res.grad_lr.reshape(()).to(self.syn_lr.dtype)
        self.param.step()
        self.opt_lr.step()
        self.syn_lr.grad = None
        if not self.param.all_finite() or not math.isfinite(self.syn_lr.item()):
            raise self._diverged(f"the synthetic set or syn_lr became NaN/inf at iteration {self.iteration}")
        rec = {"iteration": self.iteration, "loss": loss, "syn_lr": float(self.syn_lr.item()),
               "expert": k, "start_epoch": start_epoch, "seconds": time.perf_counter() - t0}
        rec.update(peak_memory(self.device))
        return rec

    def run(self) -> dict:
        """Run (or resume) to ``cfg.iterations``; returns the summary written to ``summary.json``."""
        cfg = self.cfg
        if self._load_checkpoint():
            self.log(f"resuming from iteration {self.iteration} in {self.out}")
        else:
            self._fresh_state()
        metrics = self.out / "metrics.jsonl"
        self.log(f"distilling: method {cfg.method}, engine {cfg.engine}, ipc {cfg.ipc}, N={cfg.syn_steps}, "
                 f"M={cfg.expert_epochs}, T+={cfg.max_start_epoch}, device {self.device}")
        bar = tqdm(total=cfg.iterations, initial=self.iteration, desc="distill", disable=not self.progress)
        first = self.iteration
        while True:
            it = self.iteration
            if it % cfg.eval_it == 0 or it == cfg.iterations:
                ev = self.evaluate_val()
                value = ev["mean"][self.metric]
                test = ev["extra"]["test"]
                append_jsonl(metrics, {"iteration": it, "val": ev["mean"], "val_std": ev["std"],
                                       "test": test["mean"], "test_std": test["std"]})
                if value > self.best["value"]:
                    self.best = {"iteration": it, "value": value}
                    self.save_synset(self.out / "synset")
                bar.set_postfix({f"val_{self.metric}": f"{value:.1f}", "best": f"{self.best['value']:.1f}"})
            if it == cfg.iterations:
                break
            rec = self.step()
            append_jsonl(metrics, rec)
            if self.iteration == first:
                self.log(f"iteration {rec['iteration']}: engine {cfg.engine}, {rec['seconds']:.2f} s, "
                         f"{format_peak_memory(rec)}")
            self.iteration += 1
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", syn_lr=f"{rec['syn_lr']:.4g}", mem=format_peak_memory(rec, short=True))
            if self.iteration % cfg.checkpoint_it == 0 or self.iteration % cfg.eval_it == 0:
                self._save_checkpoint()
        bar.close()
        self.save_synset(self.out / "synset_last")
        self._save_checkpoint()
        summary = {"best_iteration": self.best["iteration"], f"best_val_{self.metric}": self.best["value"],
                   "iterations": cfg.iterations, "final_syn_lr": float(self.syn_lr.item())}
        top = max_test_over_evals(read_jsonl(metrics), self.metric)
        if top is not None:
            summary["max_test_over_evals"] = top
            self.log(f"max over the in-loop evaluations of the TEST split: {self.metric} {top['value']:.2f} at "
                     f"iteration {top['iteration']} (selection on the test set, for comparison with "
                     f"published MTT tables only; the selected synset is synset/, chosen on validation)")
        write_json(self.out / "summary.json", summary)
        return summary



def distill_random(bundle, store_meta: dict | None, ipc: int, seed: int, out: str | Path) -> Synset:
    """The random-real baseline: ``ipc`` class-stratified random training images per class."""
    x, y = init_real(bundle.split("train"), ipc, torch.Generator().manual_seed(seed))
    meta = {
        "method": "random",
        "ipc": ipc,
        "classes": list(bundle.classes),
        "dataset": bundle.meta(),
        "normalization": {"mean": list(bundle.mean), "std": list(bundle.std)},
        "arch": (store_meta or {}).get("arch", "convnet"),
        "width": (store_meta or {}).get("width", 128),
        "depth": (store_meta or {}).get("depth", 3),
        "res": bundle.res,
        "channels": bundle.channels,
        "iteration": 0,
        "distill": {"method": "random", "ipc": ipc, "seed": seed},
    }
    s = Synset(x, y, None, meta)
    s.save(Path(out) / "synset")
    return s
