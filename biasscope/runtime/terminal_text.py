"""Text for a terminal: names read from files and models (modality names, paths, audit
fields) shown without the control characters that would drive the terminal. No imports
beyond the standard library (the CLI uses it at start-up)."""

from __future__ import annotations

import re

__all__ = ["plain"]

_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def plain(text: object) -> str:
    r"""``text`` with every terminal control character (escape sequences, bidi overrides)
    and lone surrogate (a file name that is not UTF-8) written as a visible ``\xNN`` / ``\uNNNN`` instead.

    >>> plain("a\x1b[2Jb")
    'a\\x1b[2Jb'
    """
    return _CONTROLS.sub(_visible, str(text))
