"""The on-disk uint8 image cache of file datasets.

Every image file is decoded and resized once, into ``<cache_dir>/<name>-r<res>-c<C>-<key>.npy``
(a plain .npy of uint8 [N, C, res, res], read back with ``np.load(mmap_mode="r")``, so a
200k-patch dataset never sits in RAM). The key hashes the sorted relative file list with
sizes and mtimes, the resolution and the channel count: any change rebuilds. The build
writes a temporary file (its full size reserved up front, so a full disk fails at once and
not as a SIGBUS in the middle of decoding) and renames it into place, so an interrupted
build never leaves a file under the final name; a final file of the wrong shape or size is
rebuilt. Any OSError while writing (read-only directory, disk full, ...) removes the
temporary files and becomes one UserError naming the cache directory. A cache that can be
read but not written (already built, in a read-only directory) is used as it is.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence

import numpy as np

from mtt_fast.data import imageio
from mtt_fast.errors import UserError

CACHE_VERSION = 1
#: below this many images the cache is built in-process (a pool costs seconds to start)
POOL_MIN_IMAGES = 2048
CHUNK = 64


def default_cache_dir() -> str:
    """$MTT_FAST_CACHE, else ~/.cache/mtt-fast."""
    return os.environ.get("MTT_FAST_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "mtt-fast"
    )


def cache_key(
    files: Sequence[str], file_stats: Sequence[tuple[int, int]], res: int, channels: int
) -> str:
    """Hex digest identifying (file list, sizes, mtimes, res, channels)."""
    h = hashlib.sha256()
    h.update(
        f"mtt-fast-cache v{CACHE_VERSION} res={res} channels={channels} n={len(files)}\n".encode()
    )
    for f, (size, mtime) in zip(files, file_stats):
        h.update(f"{f}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()[:24]


def cache_path(cache_dir: str, name: str, res: int, channels: int, key: str) -> str:
    """Path of the cache file for a dataset at a resolution."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    return os.path.join(cache_dir, f"{safe}-r{res}-c{channels}-{key}.npy")


def cannot_write(cache_dir: str, exc: OSError) -> UserError:
    """The one-line error for an OSError while writing into `cache_dir`."""
    code = exc.errno
    if code is None and len(exc.args) == 1 and isinstance(exc.args[0], int):
        code = exc.args[0]  # OSError(errno.ENOSPC)
    reason = exc.strerror or (os.strerror(code) if code else None) or str(exc) or type(exc).__name__
    return UserError(
        f"cannot write {cache_dir}: {reason} (choose another --cache-dir or set MTT_FAST_CACHE)"
    )


def _reserve(path: str) -> None:
    """Allocate the blocks of the (sparse) file at `path` now: ENOSPC here, not SIGBUS later."""
    if not hasattr(os, "posix_fallocate"):
        return
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        # filesystems without fallocate: nothing reserved, the build goes on as before
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: str | None) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


def _open_existing(path: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if not os.path.isfile(path):
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if arr.dtype != np.uint8 or tuple(arr.shape) != shape:
        return None
    return arr


def _decode_into(
    out: np.ndarray,
    paths: list[str],
    res: int,
    channels: int,
    workers: int,
    progress: bool,
    desc: str,
) -> None:
    from tqdm.auto import tqdm

    n = len(paths)
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1:
            for i, p in enumerate(paths):
                out[i] = imageio.decode_image(p, res, channels)
                bar.update(1)
            return
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # spawn, not fork: the parent holds torch's thread pools, which fork can deadlock.
        # An executor, not multiprocessing.Pool: on an error it cancels what has not started
        # and lets the running chunks finish; Pool.terminate() kills workers, which can leave
        # the task queue's lock held and hang terminate() itself (seen once in CI, in
        # test_worker_pool_reports_bad_file). At most 2 x workers chunks are in flight, so
        # results never pile up in memory.
        jobs = iter([(s, paths[s : s + CHUNK], res, channels) for s in range(0, n, CHUNK)])
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            pending: set = set()
            try:
                while True:
                    while len(pending) < 2 * workers and (job := next(jobs, None)) is not None:
                        pending.add(ex.submit(imageio._decode_chunk, job))
                    if not pending:
                        break
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        start, result = fut.result()
                        if isinstance(result, str):
                            raise UserError(result)
                        out[start : start + len(result)] = result
                        bar.update(len(result))
            except BaseException:
                ex.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bar.close()


def load_or_build(
    root: str,
    files: Sequence[str],
    file_stats: Sequence[tuple[int, int]],
    res: int,
    channels: int,
    *,
    name: str,
    cache_dir: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, str]:
    """Return the read-only uint8 memmap [N, C, res, res] of `files`, building it if needed.

    Args:
        root: directory the relative `files` are under.
        files, file_stats: the sorted relative paths and their (size, mtime_ns).
        res, channels: output size and channel count.
        name: dataset name (part of the cache file name).
        cache_dir: where caches live (default `default_cache_dir()`).
        workers: decoding processes; None = up to 8 for large datasets, else in-process.
        progress: show a tqdm bar while building.

    Returns:
        (array, path of the cache file)
    """
    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(files, file_stats, res, channels)
    path = cache_path(cache_dir, name, res, channels, key)
    shape = (len(files), channels, res, res)
    arr = _open_existing(path, shape)
    if arr is not None:
        return arr, path
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if len(files) >= POOL_MIN_IMAGES else 0
    tmp: str | None = None
    side: str | None = None
    try:
        try:
            os.makedirs(cache_dir, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                prefix=os.path.basename(path) + ".", suffix=".tmp", dir=cache_dir
            )
            os.close(fd)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a cache may be shared
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            _reserve(tmp)
        except OSError as exc:
            raise cannot_write(cache_dir, exc) from None
        paths = [os.path.join(root, f) for f in files]
        _decode_into(out, paths, res, channels, workers, progress, f"caching {name} @{res}px")
        try:
            out.flush()
            del out
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            side = f"{path}.json.{os.getpid()}.tmp"
            with open(side, "w") as f:
                json.dump(
                    {"root": root, "name": name, "res": res, "channels": channels, "n": len(files)},
                    f,
                )
            os.replace(tmp, path)
            tmp = None
            os.replace(side, path + ".json")
            side = None
        except OSError as exc:
            raise cannot_write(cache_dir, exc) from None
    except BaseException:
        _unlink_quietly(tmp)
        _unlink_quietly(side)
        raise
    arr = _open_existing(path, shape)
    assert arr is not None, f"cache {path} unreadable right after writing it"
    return arr, path
