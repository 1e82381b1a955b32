"""Small models whose dependence on each modality is known by construction."""

from __future__ import annotations

import torch
from torch import nn


class Branches(nn.Module):
    """Late fusion of M modalities, each with its own encoder ``encoders.<i>``; modalities
    whose index is in ``ignore`` are multiplied by zero before the head (structurally
    ignored: no path from them to the logits changes the output)."""

    def __init__(self, dims=(5, 3), *, hidden=8, classes=4, ignore=(), seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.encoders = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
        self.head = nn.Sequential(nn.Linear(hidden * len(dims), 16), nn.Tanh(), nn.Linear(16, classes))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
        self.ignore = set(ignore)

    def forward(self, *inputs):
        hs = []
        for i, (enc, x) in enumerate(zip(self.encoders, inputs)):
            h = torch.tanh(enc(x))
            hs.append(h * 0.0 if i in self.ignore else h)
        return self.head(torch.cat(hs, dim=1))


class DictBranches(Branches):
    """The same model called with keywords ``m0, m1, ...`` (dict batches)."""

    def forward(self, **inputs):  # type: ignore[override]
        return super().forward(*(inputs[f"m{i}"] for i in range(len(self.encoders))))


def tuple_data(dims=(5, 3), *, n=64, batch=32, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        size = min(batch, n - start)
        xs = [torch.randn(size, d, generator=g) for d in dims]
        out.append((*xs, torch.randint(0, classes, (size,), generator=g)))
    return out


def dict_data(dims=(5, 3), **kw):
    return [
        {**{f"m{i}": x for i, x in enumerate(b[:-1])}, "label": b[-1]} for b in tuple_data(dims, **kw)
    ]


def labelled_by(model, data):
    """The same tuple batches with the model's own predictions as labels: a model that is
    perfectly accurate, so that permuting a modality it uses costs accuracy."""
    with torch.no_grad():
        return [(*b[:-1], model(*b[:-1]).argmax(1)) for b in data]
