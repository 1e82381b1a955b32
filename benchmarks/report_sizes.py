"""Size of an audit's outputs with plotly.js inline (the default: the page works offline)
and from the CDN (``--plotlyjs cdn``: for CI artifacts), on the two-modality project of
tests/_project.py (48 examples, default audit options).

    python benchmarks/report_sizes.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _project import write_project  # noqa: E402

from biasscope import Modality, audit_report, load_data, load_model  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_project(root, n=48, module_name="report_sizes_models")
        loaded = load_model(root / "model.pt", factory=f"{root / 'models.py'}:build")
        mods = [Modality("image", input="image"), Modality("text", input="text")]
        for plotlyjs in ("inline", "cdn"):
            report = audit_report(loaded.module, load_data(root / "val.pt"), mods, device="cpu", plotlyjs=plotlyjs)
            sizes = {name: len(text.encode()) for name, text in report.files().items()}
            print(f"--plotlyjs {plotlyjs:6s} " + "  ".join(f"{n} {s / 1e6:.3f} MB" for n, s in sizes.items()))


if __name__ == "__main__":
    main()
