"""``mtt-fast`` with a full disk on one rank: the rank named by ``MTT_FAST_TEST_ENOSPC_RANK``
fails every expert-shard write with ENOSPC (the test of one rank's user error under torchrun)."""

import errno
import os

from mtt_fast.cli.main import main

from mtt_fast.experts import store

if os.environ.get("RANK") == os.environ.get("MTT_FAST_TEST_ENOSPC_RANK"):
    def _full(path, tensors, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    store.save_tensors = _full

if __name__ == "__main__":
    main(prog_name="mtt-fast")
