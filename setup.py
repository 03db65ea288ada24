"""Build script: the package list and the compiled core ``mtt_fast._C``.

The extension is built from ``csrc/ops.cpp`` plus every ``csrc/<family>/*.cpp`` (the CPU
kernels ``<family>_cpu.cpp`` and any host-side code of the family) and, for a CUDA build,
every ``csrc/<family>/<family>_cuda.cu``, found by glob so a new op family only adds a
folder.

Which build (see DESIGN.md, "Build"):

* a CUDAExtension whenever torch is a CUDA build (``torch.version.cuda``) and a CUDA
  toolkit with nvcc is found, GPU or not, so machines without a GPU still compile every
  ``.cu`` file;
* else a CppExtension (CPU kernels only).

Environment switches:

* ``FORCE_CUDA=1``: build the CUDA extension or fail with a clear message.
* ``FORCE_CPU=1``: build the CPU-only extension even where CUDA could be built.
* ``MTT_FAST_SKIP_EXT=1``: install the pure-Python package only (reference path).
* ``TORCH_CUDA_ARCH_LIST``: honoured as given; when unset and no GPU is visible we use
  ``DEFAULT_ARCH_LIST`` (Ampere + Hopper, with PTX for newer GPUs) to keep builds short.
* ``CUDA_HOME`` / ``CUDA_PATH``: the toolkit; otherwise ``/usr/local/cuda``, otherwise the
  toolkit that the ``nvcc`` on the PATH belongs to (it may be a wrapper script).
* ``MAX_JOBS``: ninja's parallelism (torch's own switch).

Build with ``pip install --no-build-isolation -e .`` so the extension is compiled against
the torch already installed.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

# cli/ is installed as mtt_fast.cli (see package-dir in pyproject.toml).
PACKAGES = find_packages(include=["mtt_fast", "mtt_fast.*"]) + ["mtt_fast.cli"]

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"  # relative: setuptools wants sources relative to setup.py
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _log(msg: str) -> None:
    print(f"[mtt-fast setup] {msg}", file=sys.stderr)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _toolkit_of_nvcc(nvcc: str) -> str | None:
    """The toolkit root of an nvcc executable, which may be a wrapper script.

    A symlink is followed; for a script that execs the real nvcc we ask nvcc itself: a
    ``--dryrun`` compile prints the ``TOP`` it computed from its own location.
    """
    real = os.path.realpath(nvcc)
    root = os.path.dirname(os.path.dirname(real))
    if _is_toolkit(root):
        return root
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        text = out.stdout + out.stderr
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ TOP=(.+)$", text, flags=re.MULTILINE)
    if m:
        top = os.path.normpath(m.group(1).strip().strip('"'))
        if _is_toolkit(top):
            return top
    return None


def _is_toolkit(root: str) -> bool:
    """A directory that has bin/nvcc and a CUDA runtime library to link against."""
    if not os.path.isfile(os.path.join(root, "bin", "nvcc")):
        return False
    libs = (
        glob.glob(os.path.join(root, "lib64", "libcudart*"))
        + glob.glob(os.path.join(root, "lib", "libcudart*"))
        + glob.glob(os.path.join(root, "targets", "*", "lib", "libcudart*"))
    )
    return bool(libs)


def find_cuda_home() -> str | None:
    """The real CUDA toolkit: $CUDA_HOME/$CUDA_PATH, else /usr/local/cuda, else nvcc's.

    torch guesses dirname(dirname(which nvcc)), which is /usr/local when nvcc is a wrapper
    script in /usr/local/bin; that directory has no libcudart and the link fails.
    """
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        return env  # the user's choice wins, even if odd; nvcc errors will say why
    if _is_toolkit("/usr/local/cuda"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        return _toolkit_of_nvcc(nvcc)
    return None


def nvidia_include_dirs() -> list[str]:
    """Header folders of pip's CUDA wheels (``nvidia/cu13/include``, ``nvidia/*/include``).

    ATen's CUDA headers include cusparse.h, cublas_v2.h, ... which a minimal toolkit may
    lack; torch's pip wheels ship them under site-packages/nvidia.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs: list[str] = []
    for base in spec.submodule_search_locations:
        for inc in sorted(glob.glob(os.path.join(base, "*", "include"))):
            if os.path.isdir(inc) and inc not in dirs:
                dirs.append(inc)
    return dirs


def _libstdcxx_link_flags() -> list[str]:
    """Link the shared C++ runtime even where its development symlink is missing.

    On some images (seen on a GPU machine with Ubuntu 24.04's g++ 13) ``libstdc++.so``,
    the symlink ``-lstdc++`` looks for, is absent while ``libstdc++.a`` is present, so the
    extension silently gets a second, static copy of libstdc++ whose locale is never
    initialized: the first number written into an error message (every TORCH_CHECK with
    a size in it) then crashes the process. Naming the runtime ``libstdc++.so.6`` before
    the driver's own ``-lstdc++`` makes the linker resolve against the shared library.
    """
    if not sys.platform.startswith("linux"):
        return []
    cxx = os.environ.get("CXX", "c++")
    try:
        found = subprocess.run([cxx, "-print-file-name=libstdc++.so"], capture_output=True, text=True,
                               timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return []
    if found and os.path.isabs(found) and os.path.exists(found):
        return []  # the normal case: -lstdc++ finds the shared library
    runtime = subprocess.run([cxx, "-print-file-name=libstdc++.so.6"], capture_output=True, text=True,
                             timeout=30, check=False).stdout.strip()
    if runtime and os.path.isabs(runtime) and os.path.exists(runtime):
        _log(f"{cxx} has no libstdc++.so symlink: linking the shared runtime {runtime} explicitly")
        return [runtime]
    _log(f"warning: {cxx} finds no shared libstdc++; the extension may get a static copy of it")
    return []


def _openmp_flags() -> list[str]:
    """-fopenmp when ATen parallelizes with OpenMP (at::parallel_for is header code)."""
    import torch

    try:
        info = torch.__config__.parallel_info()
    except Exception:  # noqa: BLE001  (very old or odd builds)
        return []
    if "parallel backend: OpenMP" in info and sys.platform.startswith("linux"):
        return ["-fopenmp"]
    return []


def get_extensions() -> list:
    """The ``mtt_fast._C`` extension, or [] when it cannot or must not be built."""
    if _flag("MTT_FAST_SKIP_EXT"):
        _log("MTT_FAST_SKIP_EXT=1: installing without the compiled core")
        return []
    force_cuda, force_cpu = _flag("FORCE_CUDA"), _flag("FORCE_CPU")
    if force_cuda and force_cpu:
        raise RuntimeError("FORCE_CUDA=1 and FORCE_CPU=1 are both set; pick one")

    try:
        import torch
    except ImportError:
        _log(
            "torch is not importable at build time: installing without the compiled core "
            "(install torch first and use pip install --no-build-isolation)"
        )
        return []

    # torch.utils.cpp_extension reads CUDA_HOME when it is imported: set it first.
    cuda_home = find_cuda_home() if torch.version.cuda else None
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
    import torch.utils.cpp_extension as cpp_ext

    if cuda_home and getattr(cpp_ext, "CUDA_HOME", None) != cuda_home:
        cpp_ext.CUDA_HOME = cuda_home  # imported earlier by someone else: fix it up

    cuda_possible = bool(torch.version.cuda) and cuda_home is not None
    if force_cuda and not cuda_possible:
        raise RuntimeError(
            "FORCE_CUDA=1 but "
            + (
                f"torch {torch.__version__} is not a CUDA build"
                if not torch.version.cuda
                else "no CUDA toolkit was found (set CUDA_HOME to the folder with bin/nvcc)"
            )
        )
    use_cuda = force_cuda or (cuda_possible and not force_cpu)

    sources = [os.path.join(CSRC, "ops.cpp")]
    # every host C++ file of every op family (CPU kernels, host-side ops, C++ autograd)
    sources += sorted(glob.glob(os.path.join(CSRC, "*", "*.cpp")))
    omp = _openmp_flags()
    # torch adds the -std= its headers need (c++17 or c++20). -fno-trapping-math: no kernel
    # reads floating-point exception flags, and without it GCC will not if-convert (so
    # not vectorize) loops with float compares and float->int conversions (the DSA taps).
    cxx_flags = ["-O3", "-fno-trapping-math", *omp]
    link_flags = [*_libstdcxx_link_flags(), *omp]
    kwargs: dict = {}

    if use_cuda:
        sources += sorted(glob.glob(os.path.join(CSRC, "*", "*_cuda.cu")))
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            try:
                gpu = torch.cuda.is_available()
            except Exception:  # noqa: BLE001  (a broken driver counts as no GPU)
                gpu = False
            if not gpu:
                os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        # pip's CUDA headers go after the toolkit's (-isystem comes after every -I), so
        # they only fill in what the toolkit lacks and never shadow its own headers.
        sys_inc = []
        for d in nvidia_include_dirs():
            sys_inc += ["-isystem", d]
        cxx_flags += ["-DWITH_CUDA", *sys_inc]
        nvcc_flags = ["-O3", "-DWITH_CUDA", "-lineinfo", *sys_inc]
        kwargs["extra_compile_args"] = {"cxx": cxx_flags, "nvcc": nvcc_flags}
        ext_cls = cpp_ext.CUDAExtension
        _log(
            f"building mtt_fast._C with CUDA (CUDA_HOME={cuda_home}, "
            f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '<visible GPUs>')})"
        )
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx_flags}
        ext_cls = cpp_ext.CppExtension
        _log("building mtt_fast._C for CPU only" + (" (FORCE_CPU=1)" if force_cpu else ""))

    ext = ext_cls(
        "mtt_fast._C",
        sources,
        include_dirs=[os.path.join(ROOT, CSRC)],
        extra_link_args=link_flags,
        **kwargs,
    )
    return [ext]


def _cmdclass(ext_modules: list) -> dict:
    if not ext_modules:
        return {}
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


EXT_MODULES = get_extensions()

setup(packages=PACKAGES, ext_modules=EXT_MODULES, cmdclass=_cmdclass(EXT_MODULES))
