"""Class consistency: a generator quality number that needs no download.

What it measures: a classifier trained on the REAL training data labels images drawn from
the (EMA) generator; the class consistency of class ``c`` is the fraction of images
generated with label ``c`` that the classifier assigns to ``c``, and the headline number is
the mean over classes (in percent). A high value says the generator draws recognizable,
class-correct images, which is what a deep generative prior for class-wise distillation
needs. The same classifier's accuracy on the real validation split is reported beside it
as a ceiling of sorts (generated images can exceed it when they are prototypical).

What it does NOT measure: diversity, mode coverage, or distribution match (FID, precision /
recall). A generator that draws one perfect image per class scores 100 %. Look at the
sample grids for diversity.

The classifier is either expert 0's final snapshot of an expert trajectory store
(``--classifier-store``), or a small ConvNet (width 32, depth 3) trained for a couple of
epochs on the real training split at the start of ``gan train`` and saved as
``classifier.safetensors`` + ``classifier.json`` (so a resumed run reuses it).
"""

from __future__ import annotations

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


@torch.no_grad()
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
    K = int(G.num_classes)
    if K < 1:
        raise UserError("class consistency needs a class-conditional generator")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(K * samples_per_class, int(G.z_dim), generator=gen)
    labels = torch.arange(K).repeat_interleave(samples_per_class)
    was_training = classifier.training
    classifier.eval()
    correct = torch.zeros(K)
    for i in range(0, len(labels), batch_size):
        zz, ll = z[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        ws = G.mapping(zz, ll).unsqueeze(1).repeat(1, int(G.num_ws), 1)
        img = to_model_space(G.render(None, ws, -1), mean, std)
        pred = classifier(img).argmax(1).cpu()
        correct += torch.bincount(ll.cpu()[pred == ll.cpu()], minlength=K).float()
    classifier.train(was_training)
    per_class = (100.0 * correct / samples_per_class).tolist()
    return {"class_consistency": sum(per_class) / K, "per_class": per_class, "samples_per_class": samples_per_class}
