"""Regenerate the gallery in reports/: the demo's reports (plotly from the CDN, to keep
the repo small) and the README's screenshots (rendered offline in headless Chromium).

    python reports/regenerate.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from biasscope import AuditResult
from biasscope.render import write_compare_html, write_html

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from browser import screenshot  # noqa: E402


def main() -> None:
    gallery = HERE / "demo"
    subprocess.run(
        ["biasscope", "demo", "--out", str(gallery), "--plotlyjs", "cdn"], check=True
    )
    audits = {n: AuditResult.load(gallery / n / "audit.json") for n in ("before", "after", "reference")}
    with tempfile.TemporaryDirectory() as tmp:
        # screenshots need plotly.js inline: the sandboxed browser has no network
        offline = Path(tmp)
        write_html(audits["before"], offline / "before.html", title="colored digits: before")
        write_compare_html(audits["before"], audits["after"], offline / "compare.html")
        screenshot(offline / "before.html", HERE / "report.png", height=2200)
        screenshot(offline / "compare.html", HERE / "compare.png", height=1600)


if __name__ == "__main__":
    main()
