"""Factories used by tests/test_loading.py and tests/test_layers.py (imported as
``_loading_factories:NAME`` with this directory on sys.path)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class TwoBranch(nn.Module):
    """An image branch and a text branch, concatenated into a 3-class head."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(6, hidden), nn.ReLU())
        self.text = nn.Sequential(nn.Linear(4, hidden), nn.Tanh())
        self.head = nn.Linear(2 * hidden, 3)
        self.unused = nn.Linear(3, 3)  # never called in forward
        self.register_buffer("scale", torch.tensor(1.5))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.image(image), self.text(text)], dim=1)
        return self.head(h) * self.scale


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return TwoBranch()


def make_wide_net() -> nn.Module:
    return TwoBranch(hidden=5)


def make_other_net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 3))


def make_raises() -> nn.Module:
    raise ValueError("weights directory not configured")


def make_not_module() -> dict:
    return {"image": 1}


NOT_CALLABLE = 3


class PairDataset(Dataset):
    """10 examples: dict items with ``image`` (6,), ``text`` (4,), ``label``."""

    def __init__(self, n: int = 10) -> None:
        g = torch.Generator().manual_seed(1)
        self.image = torch.randn(n, 6, generator=g)
        self.text = torch.randn(n, 4, generator=g)
        self.label = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.image[i], "text": self.text[i], "label": self.label[i]}


class TupleDataset(PairDataset):
    def __getitem__(self, i: int) -> tuple:
        return self.image[i], self.text[i], self.label[i]


def make_dataset() -> Dataset:
    return PairDataset()


def make_tuple_dataset() -> Dataset:
    return TupleDataset()


def make_loader() -> DataLoader:
    return DataLoader(PairDataset(), batch_size=3, shuffle=False)


def make_list() -> list:
    ds = PairDataset()
    return [
        {"image": ds.image[i : i + 4], "text": ds.text[i : i + 4], "label": ds.label[i : i + 4]}
        for i in range(0, 10, 4)
    ]


def make_empty() -> list:
    return []


def make_data_raises() -> list:
    raise FileNotFoundError("/data/train missing")


def make_bad_dataset() -> Dataset:
    class Broken(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int):
            raise KeyError(i)

    return Broken()


# ----------------------------------------------------------------- factories that escape


def make_exit() -> nn.Module:
    import sys

    sys.exit(0)


def make_interrupt() -> nn.Module:
    raise KeyboardInterrupt


def data_exit() -> list:
    import sys

    sys.exit(3)


class ExitingDataset(Dataset):
    """A dataset whose items call sys.exit (a crash while the data is read)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise SystemExit(0)


def make_exiting_dataset() -> Dataset:
    return ExitingDataset()


class Builder:
    """Factories may be classes or methods: both are Python code."""

    def __init__(self) -> None:
        self.fc = nn.Linear(6, 3)

    @classmethod
    def build(cls) -> nn.Module:
        return nn.Linear(6, 3)


class _Callable:
    def __call__(self) -> nn.Module:
        return nn.Linear(6, 3)


CALLABLE_INSTANCE = _Callable()


class ArgsTuple(tuple):
    """A harmless tuple subclass: unpickling it needs more than weights_only allows."""
