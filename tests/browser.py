"""Headless-Chromium helpers for the report tests and the README screenshot (stdlib only)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)
# Records console errors and uncaught exceptions in the DOM, where --dump-dom can read them.
_HOOK = """<script>(function () {
  var log = [];
  function keep(kind, args) {
    log.push(kind + ": " + Array.prototype.map.call(args, String).join(" "));
    var el = document.getElementById("__console_errors");
    if (el) el.textContent = log.join("\\n");
  }
  var err = console.error, warn = console.warn;
  console.error = function () {
    keep("console.error", arguments); return err.apply(console, arguments);
  };
  console.warn = function () {
    keep("console.warn", arguments); return warn.apply(console, arguments);
  };
  window.addEventListener("error", function (e) { keep("uncaught", [e.message || e]); }, true);
  window.addEventListener("unhandledrejection", function (e) {
    keep("unhandled rejection", [e.reason]);
  });
  document.addEventListener("DOMContentLoaded", function () {
    var el = document.createElement("pre"); el.id = "__console_errors"; el.hidden = true;
    el.textContent = log.join("\\n"); document.body.appendChild(el);
  });
})();</script>"""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None."""
    env = os.environ.get("BIASSCOPE_CHROMIUM")
    for name in ((env,) if env else ()) + CANDIDATES:
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium executable found (set BIASSCOPE_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="biasscope-chromium-") as profile:
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@dataclass
class PageLoad:
    """What a headless load of a page produced."""

    dom: str
    errors: list[str]  # console errors, warnings and uncaught exceptions
    stderr: str


def load(html_path: str | os.PathLike, *, budget_ms: int = 5000, timeout: float = 120) -> PageLoad:
    """Load ``html_path`` in headless Chromium (through a copy with a console hook) and
    return the DOM after ``budget_ms`` of virtual time, with the console errors."""
    html_path = Path(html_path).resolve()
    text = html_path.read_text(encoding="utf-8")
    hooked = text.replace("<head>", "<head>" + _HOOK, 1)
    with tempfile.TemporaryDirectory(prefix="biasscope-page-") as tmp:
        page = Path(tmp) / html_path.name
        page.write_text(hooked, encoding="utf-8")
        proc = _run(
            [
                "--enable-logging=stderr",
                "--v=0",
                f"--virtual-time-budget={budget_ms}",
                "--window-size=1280,2400",
                "--dump-dom",
                page.as_uri(),
            ],
            timeout,
        )
    dom = proc.stdout
    errors: list[str] = []
    m = re.search(r'<pre id="__console_errors"[^>]*>(.*?)</pre>', dom, re.S)
    if m and m.group(1).strip():
        errors += m.group(1).strip().splitlines()
    for line in proc.stderr.splitlines():
        if ("CONSOLE" in line and ("Uncaught" in line or "ERROR:CONSOLE" in line)) or (
            "Failed to load resource" in line
        ):
            errors.append(line)
    if not dom.strip():
        errors.append(f"chromium returned no DOM (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return PageLoad(dom=dom, errors=errors, stderr=proc.stderr)


def plot_divs(dom: str) -> dict[str, bool]:
    """Each plotly graph div's id -> whether plotly drew it (an ``svg.main-svg`` inside)."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(
        r'<div[^>]*\bid="([^"]+)"[^>]*class="[^"]*plotly-graph-div', dom
    )]
    out = {}
    for i, (pos, div_id) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(dom)
        out[div_id] = re.search(r'<svg[^>]*class="main-svg"', dom[pos:end]) is not None
    return out


def screenshot(
    html_path: str | os.PathLike,
    png_path: str | os.PathLike,
    *,
    width: int = 1280,
    height: int = 2400,
    budget_ms: int = 5000,
    timeout: float = 120,
) -> Path:
    """Render ``html_path`` to a PNG of ``width`` x ``height`` pixels with headless Chromium."""
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)
    proc = _run(
        [
            f"--virtual-time-budget={budget_ms}",
            f"--window-size={width},{height}",
            f"--screenshot={png_path}",
            Path(html_path).resolve().as_uri(),
        ],
        timeout,
    )
    if not png_path.exists():
        raise RuntimeError(
            f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
        )
    return png_path
