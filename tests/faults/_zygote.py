"""A pre-imported parent that forks one process per ``mtt-fast`` command (a "zygote").

``python -m mtt_fast.cli.main ...`` costs seconds before the command does anything (importing
torch, then ``torch._dynamo`` on the first optimizer); on a loaded 2-core CI machine that was
15-25 s per process, which the fault tests would pay a dozen times. This server imports all of
that ONCE, single-threaded (``OMP_NUM_THREADS=1``; no torch op runs here, so no thread pool
exists and forking is safe), then forks a child per request. Each child is an ordinary
process running ``mtt_fast.cli.main.main`` exactly as ``python -m mtt_fast.cli.main`` does
(``standalone_mode``, its own PID, its own file descriptors), so ``os.kill(pid, SIGKILL)``
kills the command for real: whatever it had not written is lost.

Protocol (one JSON object per line): the test writes ``{"args": [...], "log": PATH, "rc": PATH}``
on stdin; the server answers ``{"pid": N}`` on stdout. The child's stdout and stderr go to
``log``; when the child ends the server writes its exit status (``-9`` when SIGKILLed) to
``rc`` (atomically). EOF on stdin ends the server.
"""

from __future__ import annotations

import json
import os
import select
import sys


def _preload() -> None:
    import mtt_fast.cli.main
    import torch
    import torch._dynamo
    import torch.optim

    import mtt_fast.data
    import mtt_fast.distill
    import mtt_fast.evaluate
    import mtt_fast.experts
    import mtt_fast.generative
    import mtt_fast.stages  # noqa: F401

    assert torch.get_num_threads() == 1, "start the zygote with OMP_NUM_THREADS=1"


def _child(args: list[str], log: str) -> None:
    """Become the command: stdout/stderr to ``log``, run the CLI, exit with its status."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.stdin = open(0)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1)  # noqa: SIM115
        sys.argv = ["mtt-fast", *args]
        from mtt_fast.cli.main import main

        try:
            main(args=args, prog_name="mtt-fast")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - report it like the interpreter would, then exit 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _write_rc(path: str, status: int) -> None:
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    tmp = f"{path}.part"
    with open(tmp, "w") as f:
        f.write(str(code))
    os.replace(tmp, path)


def serve() -> None:
    _preload()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    pending: dict[int, str] = {}
    stdin = sys.stdin.buffer
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.02)
        for pid in list(pending):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                _write_rc(pending.pop(pid), status)
        if not ready:
            continue
        line = stdin.readline()
        if not line:
            break
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child([str(a) for a in req["args"]], req["log"])
        pending[pid] = req["rc"]
        print(json.dumps({"pid": pid}), flush=True)
    for pid, rc in pending.items():  # children still running when the tests went away
        _, status = os.waitpid(pid, 0)
        _write_rc(rc, status)


if __name__ == "__main__":
    serve()
