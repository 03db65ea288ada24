"""Settings of a distillation run: the common part and one section per method family.

``DistillConfig`` nests its sections (``trajectory`` for MTT and GLaD, ``glad``, ``dd``,
``evaluation``); every field name is unique across sections, so a run's ``config.yaml`` and a
synset's ``meta.json`` hold them as one flat mapping (:meth:`DistillConfig.flat`), the format
run directories have always had, and :meth:`DistillConfig.from_flat` reads it back.

``lr_img`` and ``lr_lr`` default to ``None``: "the method's own" (MTT and GLaD: SGD, 1000 and
1e-5; DD: Adam, 0.01 and 1e-4), filled in by :meth:`DistillConfig.resolved` from the method's
``defaults`` (``mtt_fast/distill/methods``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from mtt_fast.augment import DSAConfig
from mtt_fast.distill.registry import method_class
from mtt_fast.errors import UserError


@dataclass
class TrajectoryOptions:
    """Trajectory matching (mtt, glad): which part of which expert run is matched, and how."""

    expert_epochs: int = 2
    max_start_epoch: int = 20
    engine: str = "auto"
    offload_history: bool = False
    #: ``--engine auto``'s memory budget in bytes (None: the engine's own default rule)
    memory_budget: int | None = None
    #: ``"LO:HI:ITERS"``: T+ grows linearly from LO to HI over ITERS iterations (DATM); None: fixed T+
    start_epoch_schedule: str | None = None
    #: skip the update of an iteration whose normalized matching loss is above this (DATM); None: never
    skip_loss_above: float | None = None
    #: which parameters enter the matching loss: ``all``, ``deep:F`` or an index range ``A:B`` (PAD)
    match_layers: str = "all"


@dataclass
class GLaDOptions:
    """GLaD: the generator and its latent parameterization (``mtt_fast/synth/latent.py``)."""

    generator: str | None = None
    space: str = "wp"
    layer: int = -1
    avg_w: bool = False
    lr_w: float = 1.0
    lr_g: float = 0.01
    learn_g: bool = False
    g_batch: int = 100


@dataclass
class DDOptions:
    """DD: initializations per iteration and the real minibatch they are scored on."""

    dd_models: int = 4
    batch_real: int = 256


@dataclass
class InLoopEval:
    """The validation evaluations during distillation that select the kept synset."""

    eval_it: int = 100
    eval_epochs: int = 300
    eval_repeats: int = 1


#: momentum of the SGD on the soft-label logits (DATM's ``Momentum_y``)
LABEL_MOMENTUM = 0.9

_SECTIONS = {"trajectory": TrajectoryOptions, "glad": GLaDOptions, "dd": DDOptions, "evaluation": InLoopEval}


@dataclass
class DistillConfig:
    """Settings of a distillation run (names follow the MTT reference's flags)."""

    method: str = "mtt"
    ipc: int = 10
    syn_steps: int = 20
    iterations: int = 5000
    lr_img: float | None = None
    lr_lr: float | None = None
    lr_teacher: float | None = None
    syn_lr_min: float = 1e-6
    momentum: float = 0.5
    batch_syn: int | None = None
    pix_init: str = "real"
    dsa: dict = field(default_factory=lambda: asdict(DSAConfig()))
    dsa_impl: str = "auto"
    block_impl: str = "auto"
    checkpoint_it: int = 10
    seed: int = 0
    #: learn soft labels (logits) initialised from an expert (DATM); on random/herding/kcenter: the
    #: expert's logits on the chosen images, not optimized (the soft-label controls)
    soft_labels: bool = False
    #: learning rate of the soft-label logits (SGD, momentum ``LABEL_MOMENTUM``; DATM uses 2-5)
    lr_y: float = 2.0
    #: decay of an exponential moving average of the images (and soft labels), evaluated and
    #: selected beside the raw set (FTD); None: no EMA
    ema_images: float | None = None
    trajectory: TrajectoryOptions = field(default_factory=TrajectoryOptions)
    glad: GLaDOptions = field(default_factory=GLaDOptions)
    dd: DDOptions = field(default_factory=DDOptions)
    evaluation: InLoopEval = field(default_factory=InLoopEval)

    # -- the flat on-disk form -------------------------------------------------------------
    def flat(self) -> dict:
        """Every setting in one mapping (``config.yaml``, synset ``meta.json["distill"]``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _SECTIONS}
        for name in _SECTIONS:
            out.update(asdict(getattr(self, name)))
        out["dsa"] = dict(out["dsa"])
        return out

    @classmethod
    def from_flat(cls, values: dict, *, what: str = "distill settings") -> DistillConfig:
        """Inverse of :meth:`flat`; an unknown key is a :class:`UserError` naming ``what``."""
        top = {f.name for f in fields(cls)} - set(_SECTIONS)
        owner = {f.name: s for s, c in _SECTIONS.items() for f in fields(c)}
        kw: dict = {}
        parts: dict[str, dict] = {s: {} for s in _SECTIONS}
        for k, v in values.items():
            if k in top:
                kw[k] = v
            elif k in owner:
                parts[owner[k]][k] = v
            else:
                raise UserError(f"{what}: unknown setting {k!r}")
        return cls(**kw, **{s: _SECTIONS[s](**p) for s, p in parts.items()})

    @classmethod
    def flat_names(cls) -> list[str]:
        """Every flat setting name (the keys :meth:`from_flat` accepts)."""
        return list(cls().flat())

    # -- method defaults ---------------------------------------------------------------------
    def resolved(self) -> DistillConfig:
        """A copy with ``lr_img`` / ``lr_lr`` filled from the method's defaults."""
        d = method_class(self.method).defaults
        return replace(self, lr_img=d["lr_img"] if self.lr_img is None else self.lr_img,
                       lr_lr=d["lr_lr"] if self.lr_lr is None else self.lr_lr)
