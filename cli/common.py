"""Options and plumbing shared by every command: --config, --seed, --device, errors."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click
import yaml

from mtt_fast.augment import DSAConfig
from mtt_fast.errors import UserError
from mtt_fast.io import read_yaml
from mtt_fast.stages.common import DataOptions


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None):
    """Eager callback: a YAML file's keys become the command's defaults (flags override)."""
    if not value:
        return value
    try:
        data = read_yaml(value, what="--config")
        if not isinstance(data, dict):
            raise UserError(f"--config {value} must hold a mapping of option: value")
        known = {p.name: p for p in ctx.command.params}
        mapped = {}
        for k, v in data.items():
            name = str(k).replace("-", "_")
            if name not in known or name == "config":
                raise UserError(f"--config {value}: unknown option {k!r} for `{ctx.command_path}`")
            try:
                known[name].type_cast_value(ctx, v)
            except click.BadParameter as e:
                raise UserError(f"--config {value}: {k}: {e.message}") from None
            mapped[name] = v
        ctx.default_map = {**(ctx.default_map or {}), **mapped}
    except UserError as e:
        fail(str(e))
    return value


def config_option(f):
    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=_load_config, help="YAML file of option values (flags given on the command line win).")(f)


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    if value is not None:
        import torch

        torch.set_num_threads(value)


def common_options(f):
    """--seed, --device, --num-threads, --progress/--no-progress, --config."""
    f = click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")(f)
    f = click.option("--num-threads", type=click.IntRange(min=1), default=None, expose_value=False,
                     callback=_set_threads,
                     help="CPU threads of PyTorch (default: its own, one per core). A resumed run gives the same "
                          "bits as an uninterrupted one only on the same thread count.")(f)
    f = click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice.")(f)
    return config_option(f)


def parse_kv(pairs: tuple[str, ...], option: str) -> dict:
    """``("key=value", ...)`` -> dict, values parsed as YAML (numbers, lists, mappings)."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise UserError(f"{option} {p!r}: expected KEY=VALUE")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise UserError(f"{option} {p!r}: value is not valid YAML") from None
    return out


def fail(message: str) -> None:
    """One ``error:`` line on stderr and exit status 2; under torchrun every rank ends with it."""
    from mtt_fast import distributed

    if distributed.initialized():
        distributed.fail_all(message, lambda m: click.echo(f"error: {m}", err=True))
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def user_errors(f):
    """Turn a UserError into one line on stderr and exit status 2."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted; rerun the same command to resume")
        except OSError as e:  # a read or write the library did not name itself (disk full, permissions, ...)
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}")

    return wrapper


def echo(msg: str) -> None:
    click.echo(msg)


def out_path(value: str) -> Path:
    return Path(value).expanduser()


def dataset_options(required: bool = True):
    """--dataset, --data-root, --res, --normalization, --data-option, --cache-dir (data, buffer, gan train)."""
    def deco(f):
        f = click.option("--cache-dir", default=None, help="Where decoded, resized images are cached (default $MTT_FAST_CACHE or ~/.cache/mtt-fast).")(f)
        f = click.option("--data-option", "data_option", multiple=True, metavar="KEY=VALUE",
                         help="Dataset option, e.g. cohort=STAD (crc), val_size=5000; repeatable.")(f)
        f = click.option("--normalization", default=DataOptions("").normalization, show_default=True, help="auto | compute | none | a preset (crc, pg, imagenet, fashion-mnist).")(f)
        f = click.option("--res", type=int, default=None, help="Image side in pixels (default: the dataset's own; paper: 224).")(f)
        f = click.option("--data-root", default=None, help="Dataset directory (fashion-mnist defaults to Debian's).")(f)
        f = click.option("--dataset", required=required, help="pg | crc | folder | npz | fashion-mnist")(f)
        return f

    return deco


def data_options_of(dataset, data_root, res, normalization, data_option, cache_dir) -> DataOptions:
    """The values of :func:`dataset_options` as the stages' :class:`DataOptions`."""
    return DataOptions(dataset, data_root, res, normalization, parse_kv(data_option, "--data-option"), cache_dir)


_DSA = DSAConfig()


def dsa_options(f):
    """--dsa-strategy, --dsa-mode, --dsa-impl (buffer, distill, eval)."""
    f = click.option("--dsa-impl", type=click.Choice(["auto", "fused", "reference"]), default="auto", show_default=True,
                     help="DSA implementation: auto (the fused compiled op where built for the device, else the "
                          "pure-PyTorch reference), fused (fail if unavailable), reference (for comparison).")(f)
    f = click.option("--dsa-mode", type=click.Choice(["S", "M"]), default=_DSA.mode, show_default=True,
                     help="S: one augmentation group per batch (MTT); M: all groups in turn.")(f)
    f = click.option("--dsa-strategy", default=_DSA.strategy, show_default=True,
                     help="Differentiable Siamese augmentation ops joined by _ (add noise for the paper's noise op); "
                          "none disables.")(f)
    return f
