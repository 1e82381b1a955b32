"""A tiny two-modality project on disk (a factory file, its trained-nothing state dict, data
labelled by the model itself), shared by the fuzz and kill tests."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import torch

MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = nn.Linear(5, 8)
            self.text = nn.Linear(3, 8)
            self.head = nn.Linear(16, 4)

        def forward(self, image, text):
            return self.head(torch.cat([torch.tanh(self.image(image)), torch.tanh(self.text(text))], 1))

    def build():
        return Net()
    """
)


def write_project(root: Path, *, n: int, module_name: str):
    """``models.py``, ``model.pt`` (seed 0) and ``val.pt`` (n examples labelled by the model)
    in ``root``; returns the network and its data."""
    (root / "models.py").write_text(MODEL)
    spec = importlib.util.spec_from_file_location(module_name, root / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = module.Net()
    torch.save(net.state_dict(), root / "model.pt")
    image, text = torch.randn(n, 5), torch.randn(n, 3)
    with torch.no_grad():
        label = net(image, text).argmax(1)
    torch.save({"image": image, "text": text, "label": label}, root / "val.pt")
    return net, image, text, label
