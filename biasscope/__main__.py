"""``python -m biasscope``: the ``biasscope`` command (through its launcher, see
:mod:`biasscope.cli.launcher`)."""

from __future__ import annotations

from biasscope.cli.launcher import main

if __name__ == "__main__":
    main()
