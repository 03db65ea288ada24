"""``python -m mtt_fast``: the command line (also what ``torchrun ... -m mtt_fast`` starts)."""

from mtt_fast.cli.main import main

if __name__ == "__main__":
    main(prog_name="mtt-fast")
