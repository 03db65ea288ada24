"""One GAN step under torchrun (DDP) against the same step in one process, on every rank.

Run by ``test_gan_torchrun.py`` as ``torchrun --nproc-per-node K _gan_grads.py CRC_ROOT CACHE OUT``.
D's minibatch-std groups are set to one image (the only part of the step that mixes the rows of a
batch, so the only one a split batch changes); then the DDP step's D and G gradients (R1 due:
the double backward through D, with a gamma large enough that R1 dominates D's weight gradients),
the per-class average style, ADA's sign statistic and G_ema must equal those of one process
stepping the whole global batch, up to float32 rounding (measured: 5e-6 relative at most). Prints
one ``max-rel NAME VALUE`` line per quantity from rank 0 and exits 1 if any is over ``TOL``.

Also the resume under torchrun: rank 0 writes the step's checkpoint, a new trainer on the same run
directory reads it on rank 0 and broadcasts it, and every rank must then hold exactly the state it
had (``resumed-equal [True, True]``).
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import torch

from mtt_fast import distributed
from mtt_fast.data import load_dataset
from mtt_fast.generative import GANConfig, GANTrainer

TOL = 1e-4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _one_step(bundle, out: Path, cfg: GANConfig) -> tuple[GANTrainer, dict[str, torch.Tensor]]:
    tr = GANTrainer(bundle, out, cfg, progress=False, log=lambda msg: None)
    tr.D.mbstd.group_size = 1
    tr.G.train()
    tr.D.train()
    tr.step()  # step 0: R1 is due
    got = {f"D.grad.{n}": p.grad for n, p in tr.D.named_parameters()}
    got.update({f"G.grad.{n}": p.grad for n, p in tr.G.named_parameters()})
    got.update({f"G_ema.{n}": p for n, p in tr.G_ema.named_parameters()})
    got["w_avg"], got["w_count"] = tr.w_avg, tr.w_count
    got["ada_signs"] = torch.tensor([tr.ada.sign_sum, tr.ada.sign_count])
    got["r1"] = torch.tensor([tr.r1_last])
    return tr, {k: v.detach().clone() for k, v in got.items()}


def _resumable(tr: GANTrainer) -> list:
    """Everything a checkpoint restores, as a flat list (tensors and numbers)."""
    out: list = [tr.cur_step, tr.cur_nimg, tr.r1_last, tr.log_count, sorted(tr.log_sums.items()),
                 sorted(tr.ada.state().items()), tr.gen.get_state(), tr.w_avg, tr.w_count]
    for m in (tr.G, tr.G_ema, tr.D):
        out += list(m.state_dict().values())
    for opt in (tr.opt_G, tr.opt_D):
        for st in opt.state_dict()["state"].values():
            out += [st[k] for k in sorted(st)]
    return out


def _same(a: list, b: list) -> bool:
    """Equal bits (NaN equals NaN: ADA's r_t before its first adjustment)."""
    def eq(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(eq(u, v) for u, v in zip(x, y))
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))

    return eq(a, b)


def main() -> int:
    root, cache, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    distributed.init(device_type="cpu")
    bundle = load_dataset("crc", root, 16, seed=3, cache_dir=cache, progress=False)
    cfg = GANConfig(steps=1, batch_size=7, z_dim=8, w_dim=16, channel_base=64, channel_max=8, r1_interval=2,
                    r1_gamma=10.0, classifier_epochs=1, quality_samples=2, seed=3, dsa_impl="reference")
    tr, split = _one_step(bundle, out / "split", cfg)  # rank 0 trained the quality classifier before its step
    # resume: rank 0 writes a checkpoint, a new trainer reads it on rank 0 and every rank gets its state
    if distributed.is_main():
        tr.save_checkpoint()
    distributed.barrier()
    again = GANTrainer(bundle, out / "split", cfg, progress=False, log=lambda msg: None)
    resumed = distributed.all_gather_object(_same(_resumable(again), _resumable(tr)))
    whole_dir = out / f"whole_{distributed.global_rank()}"
    whole_dir.mkdir(parents=True)
    for name in ("classifier.safetensors", "classifier.json"):  # the same one, not trained again
        shutil.copyfile(out / "split" / name, whole_dir / name)
    with distributed.solo():  # the whole global batch in this process
        _, whole = _one_step(bundle, whole_dir, cfg)
    worst = {k: _rel(split[k], whole[k]) for k in whole}
    if distributed.global_rank() == 0:
        groups: dict[str, float] = {}
        for k, v in worst.items():
            g = k.split(".")[0] if "." in k else k
            groups[g] = max(groups.get(g, 0.0), v)
        for g, v in groups.items():
            print(f"max-rel {g} {v:.3e}", flush=True)
        print("worst", max(worst, key=worst.get), flush=True)
        print(f"resumed-equal {resumed}", flush=True)
    return 0 if max(worst.values()) <= TOL and all(resumed) else 1


if __name__ == "__main__":
    sys.exit(main())
