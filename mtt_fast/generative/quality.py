"""Class consistency: a generator quality number that needs no download.

What it measures: a classifier trained on the REAL training data labels images drawn from
the (EMA) generator; the class consistency of class ``c`` is the fraction of images
generated with label ``c`` that the classifier assigns to ``c``, and the headline number is
the mean over classes (in percent). A high value says the generator draws recognizable,
class-correct images, which is what a deep generative prior for class-wise distillation
needs. The same classifier's accuracy on the real validation split is reported beside it
as a ceiling of sorts (generated images can exceed it when they are prototypical).

Class consistency alone does not measure diversity: a generator that draws one perfect
image per class scores 100 %. Beside it, in the same classifier's feature space (the input
of its last linear layer; no downloaded Inception weights), per class:

* ``kid``: an unbiased kernel distance (KID-style MMD^2 with the polynomial kernel
  ``(x . y / d + 1)^3``) between the features of the generated images and of up to
  ``samples_per_class`` real VALIDATION images of that class (images neither G nor the
  classifier trained on); 0 in expectation for a generator that draws the real distribution,
  larger is worse. The headline is the mean over classes;
* diversity: the mean pairwise feature distance within the class, generated and real, and
  their ratio (``diversity_ratio``, mean over classes; near 0 = collapsed, 1 = as varied as
  the real images).

Both are in classifier features, so they see what the classifier sees (class evidence),
not every pixel; they compare runs judged by the same classifier, not across datasets.

The classifier is either expert 0's final snapshot of an expert trajectory store
(``--classifier-store``), or a small ConvNet (width 32, depth 3) trained for a couple of
epochs on the real training split at the start of ``gan train`` and saved as
``classifier.safetensors`` + ``classifier.json`` (so a resumed run reuses it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mtt_fast.errors import UserError
from mtt_fast.experts import TrajectoryStore
from mtt_fast.experts.train import limit_per_class
from mtt_fast.fit import fit_classifier
from mtt_fast.io import load_tensors, read_json, save_tensors, write_json
from mtt_fast.models import get_network, seeded_network
from mtt_fast.synth.generator import to_model_space

CLASSIFIER_FORMAT = "mtt-fast/gan-classifier"


@torch.no_grad()
def split_accuracy(net: nn.Module, split, device: torch.device | str = "cpu", batch_size: int = 500) -> float:
    """Accuracy (percent) of ``net`` on every image of ``split`` (normalized inputs)."""
    net.eval()
    correct, n = 0, len(split)
    for i in range(0, n, batch_size):
        idx = torch.arange(i, min(n, i + batch_size))
        pred = net(split.get(idx, device=device)).argmax(1).cpu()
        correct += int((pred == split.labels[idx]).sum())
    return 100.0 * correct / max(n, 1)


def train_classifier(bundle, *, epochs: int = 2, width: int = 32, depth: int = 3, max_train_per_class: int | None = None,
                     batch_size: int = 128, lr: float = 0.01, seed: int = 0, device: torch.device | str = "cpu",
                     progress: bool = True) -> nn.Module:
    """A small ConvNet trained on the real training split (SGD, momentum 0.9, cosine lr)."""
    train = limit_per_class(bundle.split("train"), max_train_per_class, torch.Generator().manual_seed(seed))
    net = seeded_network("convnet", bundle.channels, bundle.num_classes, bundle.res, width=width, depth=depth,
                         seed=seed).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = (len(train) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs * steps_per_epoch, 1))
    gen = torch.Generator().manual_seed(seed + 1)
    fit_classifier(net, lambda epoch: train.batches(batch_size, generator=gen, shuffle=True, device=device), opt,
                   epochs=epochs, scheduler=sched,
                   diverged=lambda loss: f"the class-consistency classifier's training loss became {loss}",
                   progress=progress, desc="classifier", progress_per="step", steps_per_epoch=steps_per_epoch)
    net.eval()
    return net


def classifier_from_store(store_dir: str | Path, bundle, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Expert 0's final snapshot of a trajectory store, as a classifier for ``bundle``'s images."""
    try:
        store = TrajectoryStore.open(store_dir)
    except UserError as e:
        raise UserError(str(e).replace("--buffer", "--classifier-store", 1)) from None
    m = store.meta
    if list(m["classes"]) != list(bundle.classes) or int(m["res"]) != bundle.res or int(m["channels"]) != bundle.channels:
        raise UserError(f"--classifier-store {store_dir}: its experts classify {m['classes']} at {m['res']} px, "
                        f"but the GAN trains on {bundle.classes} at {bundle.res} px")
    norm = m.get("normalization", {})
    if [round(v, 6) for v in norm.get("mean", [])] != [round(v, 6) for v in bundle.mean] or \
            [round(v, 6) for v in norm.get("std", [])] != [round(v, 6) for v in bundle.std]:
        raise UserError(f"--classifier-store {store_dir}: its normalization {norm} differs from the dataset's "
                        f"(mean {list(bundle.mean)}, std {list(bundle.std)})")
    net = store.build_network()
    flat = store.snapshots(0, [store.epochs])[0]
    store.layout.load_into(net, flat)
    net = net.to(device).eval()
    return net, {"source": "store", "store": str(Path(store_dir).resolve()), "arch": m["arch"], "expert": 0,
                 "epoch": store.epochs}


def load_or_train_classifier(out: str | Path, bundle, *, store: str | None = None, epochs: int = 2,
                             max_train_per_class: int | None = None, seed: int = 0,
                             device: torch.device | str = "cpu", progress: bool = True,
                             log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """The class-consistency classifier of a ``gan train`` run directory.

    From ``store`` when given; else ``out/classifier.safetensors`` when a previous (killed)
    run trained it; else trains one and saves it there. The returned info holds
    ``val_accuracy``: the classifier's accuracy on the real validation split.
    """
    out = Path(out)
    if store:
        net, info = classifier_from_store(store, bundle, device)
        info["val_accuracy"] = split_accuracy(net, bundle.split("val"), device)
        return net, info
    wpath, jpath = out / "classifier.safetensors", out / "classifier.json"
    if wpath.is_file() and jpath.is_file():
        info = read_json(jpath, what="classifier metadata")
        net = get_network("convnet", bundle.channels, bundle.num_classes, bundle.res, width=info["width"],
                          depth=info["depth"])
        try:
            net.load_state_dict(load_tensors(wpath, what="classifier"))
        except RuntimeError as e:
            raise UserError(f"{wpath} does not fit the classifier in {jpath}: {str(e).splitlines()[0]}") from None
        return net.to(device).eval(), info
    log(f"training the class-consistency classifier (convnet width 32 depth 3, {epochs} epochs on real data)")
    net = train_classifier(bundle, epochs=epochs, max_train_per_class=max_train_per_class, seed=seed,
                           device=device, progress=progress)
    info = {"format": CLASSIFIER_FORMAT, "source": "trained", "arch": "convnet", "width": 32, "depth": 3,
            "epochs": epochs, "max_train_per_class": max_train_per_class,
            "val_accuracy": split_accuracy(net, bundle.split("val"), device)}
    save_tensors(wpath, dict(net.state_dict()))
    write_json(jpath, info)
    return net, info


def truncate(w: torch.Tensor, labels: torch.Tensor, w_avg: torch.Tensor | None, psi: float) -> torch.Tensor:
    """The truncation trick: ``w_avg[label] + psi * (w - w_avg[label])`` (``psi == 1``: ``w`` itself).

    Args:
        w: styles ``[n, w_dim]``.
        labels: their classes ``[n]``.
        w_avg: the average style of every class ``[K, w_dim]`` (``gan train`` tracks it).
        psi: 1 leaves ``w`` alone; 0 gives every image of a class its average style.
    """
    if psi == 1.0:
        return w
    if w_avg is None:
        raise UserError(f"--truncation {psi} needs the generator's average style (w_avg.safetensors), "
                        "which this generator does not have")
    avg = w_avg.to(device=w.device, dtype=w.dtype)[labels]
    return avg + psi * (w - avg)


@torch.no_grad()
def judge_generated(G: nn.Module, classifier: nn.Module, *, mean, std, samples_per_class: int = 100,
                    seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 250,
                    truncation: float = 1.0, w_avg: torch.Tensor | None = None
                    ) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Class consistency of ``G`` (see :func:`class_consistency`), plus the classifier's features
    ``[K * samples_per_class, d]`` (CPU) of the generated images and their labels.

    ``truncation`` (with the per-class ``w_avg``) draws the images through :func:`truncate`.
    """
    K = int(G.num_classes)
    if K < 1:
        raise UserError("class consistency needs a class-conditional generator")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(K * samples_per_class, int(G.z_dim), generator=gen)
    labels = torch.arange(K).repeat_interleave(samples_per_class)
    was_training = classifier.training
    classifier.eval()
    correct = torch.zeros(K)
    feats = []
    for i in range(0, len(labels), batch_size):
        zz, ll = z[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        w = truncate(G.mapping(zz, ll), ll, w_avg, truncation)
        ws = w.unsqueeze(1).repeat(1, int(G.num_ws), 1)
        img = to_model_space(G.render(None, ws, -1), mean, std)
        logits, f = logits_and_features(classifier, img)
        feats.append(f.cpu())
        pred = logits.argmax(1).cpu()
        correct += torch.bincount(ll.cpu()[pred == ll.cpu()], minlength=K).float()
    classifier.train(was_training)
    per_class = (100.0 * correct / samples_per_class).tolist()
    res = {"class_consistency": sum(per_class) / K, "per_class": per_class, "samples_per_class": samples_per_class}
    return res, torch.cat(feats), labels


def class_consistency(G: nn.Module, classifier: nn.Module, *, mean, std, samples_per_class: int = 100,
                      seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 250) -> dict:
    """How often ``classifier`` labels ``G``'s images as the class they were drawn for.

    Args:
        G: a generator (see :mod:`mtt_fast.synth.generator`) with ``num_classes >= 1``.
        classifier: maps model-space images ``[n, C, R, R]`` to logits ``[n, K]``.
        mean, std: the classifier's input normalization (pixels go through ``to_model_space``).
        samples_per_class: images drawn per class (fixed latents: the same ``seed`` draws
            the same ``z`` at every call, so numbers along a run are comparable).
        seed: seed of the latents.

    Returns:
        ``{"class_consistency": mean over classes (percent), "per_class": [K percents],
        "samples_per_class": n}``.
    """
    return judge_generated(G, classifier, mean=mean, std=std, samples_per_class=samples_per_class, seed=seed,
                           device=device, batch_size=batch_size)[0]


# ------------------------------------------------------------------------------ feature-space quality
def last_linear(net: nn.Module) -> nn.Module:
    """The last ``nn.Linear`` of ``net`` (its input is the feature vector quality is measured in).

    Raises:
        UserError: ``net`` has no linear layer.
    """
    lin = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not lin:
        raise UserError("the quality classifier has no linear layer to take features from")
    return lin[-1]


@torch.no_grad()
def logits_and_features(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [n, K], features [n, d])`` of ``net`` on ``x``: the features are the input of its
    last linear layer (a ConvNet's flattened last block), captured by a forward pre-hook."""
    got: list[torch.Tensor] = []
    handle = last_linear(net).register_forward_pre_hook(lambda m, inp: got.append(inp[0].detach().flatten(1)))
    try:
        logits = net(x)
    finally:
        handle.remove()
    return logits, got[-1]


def poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KID's polynomial kernel ``k(x, y) = (x . y / d + 1) ** 3`` between the rows of ``x`` and ``y``."""
    return (x @ y.t() / x.shape[1] + 1.0) ** 3


def kernel_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 between the samples ``x [m, d]`` and ``y [n, d]`` under :func:`poly_kernel`.

    ``sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
    - 2 sum_{i, j} k(x_i, y_j) / (m n)``, in float64 (the KID of Binkowski et al. 2018 on
    one subset: zero in expectation when both come from the same distribution, so it can be
    slightly negative).

    Raises:
        ValueError: fewer than two rows in ``x`` or ``y``.
    """
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("the kernel distance needs at least two samples on each side")
    x, y = x.double(), y.double()
    kxx, kyy, kxy = poly_kernel(x, x), poly_kernel(y, y), poly_kernel(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean Euclidean distance over the pairs ``i < j`` of the rows of ``x`` (within-set diversity)."""
    if x.shape[0] < 2:
        return float("nan")
    d = torch.cdist(x.double(), x.double())
    n = x.shape[0]
    return float(d.sum() / (n * (n - 1)))


def real_quality_images(split, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions, labels)``: up to ``per_class`` images of every class of ``split``, a seeded pick."""
    gen = torch.Generator().manual_seed(seed)
    pos, lab = [], []
    for c in range(split.num_classes):
        idx = torch.nonzero(split.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)[:per_class]]
        pos.append(idx)
        lab.append(torch.full((len(idx),), c, dtype=torch.long))
    return torch.cat(pos), torch.cat(lab)


@torch.no_grad()
def real_features(classifier: nn.Module, split, per_class: int, seed: int, device: torch.device | str = "cpu",
                  batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [n, d] on the CPU, labels [n])`` of :func:`real_quality_images` of ``split``."""
    pos, labels = real_quality_images(split, per_class, seed)
    was_training = classifier.training
    classifier.eval()
    feats = [logits_and_features(classifier, split.get(pos[i:i + batch_size], device=device))[1].cpu()
             for i in range(0, len(pos), batch_size)]
    classifier.train(was_training)
    return (torch.cat(feats) if feats else torch.zeros(0, 1)), labels


def feature_quality(gen_feats: torch.Tensor, gen_labels: torch.Tensor, real_feats: torch.Tensor,
                    real_labels: torch.Tensor, num_classes: int) -> dict:
    """Per-class kernel distance and diversity of generated vs real features.

    Returns:
        ``{"kid": mean over the classes that have >= 2 images on both sides (None if none),
        "kid_per_class": [K] (None where undefined), "diversity_gen": [K], "diversity_real": [K]
        (mean pairwise feature distance within the class), "diversity_ratio": mean over classes of
        gen / real (1: as varied as the real images; near 0: collapsed)}``.
    """
    kid, dg, dr, ratio = [], [], [], []
    for c in range(num_classes):
        g, r = gen_feats[gen_labels == c], real_feats[real_labels == c]
        kid.append(kernel_distance(g, r) if len(g) >= 2 and len(r) >= 2 else None)
        dg.append(mean_pairwise_distance(g))
        dr.append(mean_pairwise_distance(r))
        if math.isfinite(dg[-1]) and math.isfinite(dr[-1]) and dr[-1] > 0:
            ratio.append(dg[-1] / dr[-1])
    defined = [k for k in kid if k is not None]
    nan_to_none = lambda v: v if math.isfinite(v) else None
    return {"kid": sum(defined) / len(defined) if defined else None, "kid_per_class": kid,
            "diversity_gen": [nan_to_none(v) for v in dg], "diversity_real": [nan_to_none(v) for v in dr],
            "diversity_ratio": sum(ratio) / len(ratio) if ratio else None}
