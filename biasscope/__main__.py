"""``python -m biasscope``: the ``biasscope`` command."""

from __future__ import annotations

from biasscope.cli.main import app

if __name__ == "__main__":
    app(prog_name="biasscope")
