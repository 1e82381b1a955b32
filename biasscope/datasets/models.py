"""Small late-fusion benchmark models for the bundled datasets, and a plain training loop.

Each modality has a named encoder (``image_encoder``, ``color_encoder``, ``noise_encoder``)
whose output is a representation a modality spec can point at; ``head`` classifies the
concatenated representations.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["TwoModalityNet", "ThreeModalityNet", "train_plain", "accuracy"]


def _image_encoder(image_size: int, hidden: int) -> nn.Sequential:
    """A two-block CNN: (N, 1, S, S) -> (N, hidden)."""
    if image_size < 4 or image_size % 4:
        raise ConfigError(f"image_size={image_size} must be a positive multiple of 4.")
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, hidden),
        nn.ReLU(),
    )


def _vector_encoder(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())


def _head(width: int, hidden: int, n_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


class _Seeded:
    """Build a module's parameters under a fixed seed without touching the global RNG."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._fork = None

    def __enter__(self) -> None:
        if self.seed is not None:
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        if self._fork is not None:
            self._fork.__exit__(*exc)


class TwoModalityNet(nn.Module):
    """Late fusion of an image CNN and a colour MLP: ``forward(image, color) -> logits``.

    Args:
        image_size: side of the square (N, 1, S, S) input image (a multiple of 4).
        n_classes: number of classes.
        hidden: width of each encoder's output and of the head.
        color_dim: size of the colour vector.
        seed: when given, the initial weights are drawn from this seed (the global RNG is
            left untouched); otherwise from the global RNG, as any nn.Module.
    """

    def __init__(
        self,
        image_size: int = 16,
        n_classes: int = 10,
        *,
        hidden: int = 32,
        color_dim: int = 3,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        with _Seeded(seed):
            self.image_encoder = _image_encoder(image_size, hidden)
            self.color_encoder = _vector_encoder(color_dim, hidden)
            self.head = _head(2 * hidden, hidden, n_classes)

    def forward(self, image: Tensor, color: Tensor) -> Tensor:
        return self.head(torch.cat([self.image_encoder(image), self.color_encoder(color)], dim=1))


class ThreeModalityNet(nn.Module):
    """Late fusion of image, colour and noise encoders: ``forward(image, color, noise)``.

    Args are those of :class:`TwoModalityNet`, plus ``noise_dim``, the size of the noise vector.
    """

    def __init__(
        self,
        image_size: int = 16,
        n_classes: int = 10,
        *,
        hidden: int = 32,
        color_dim: int = 3,
        noise_dim: int = 8,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        with _Seeded(seed):
            self.image_encoder = _image_encoder(image_size, hidden)
            self.color_encoder = _vector_encoder(color_dim, hidden)
            self.noise_encoder = _vector_encoder(noise_dim, hidden)
            self.head = _head(3 * hidden, hidden, n_classes)

    def forward(self, image: Tensor, color: Tensor, noise: Tensor) -> Tensor:
        parts = [self.image_encoder(image), self.color_encoder(color), self.noise_encoder(noise)]
        return self.head(torch.cat(parts, dim=1))


def _split(data: Mapping[str, Tensor], label_key: str) -> tuple[dict[str, Tensor], Tensor]:
    if label_key not in data:
        raise ConfigError(f"The data has no {label_key!r} entry (it holds {sorted(data)}).")
    inputs = {k: v for k, v in data.items() if k != label_key}
    return inputs, data[label_key]


def train_plain(
    model: nn.Module,
    data: Mapping[str, Tensor],
    *,
    epochs: int = 15,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    label_key: str = "label",
    num_threads: int | None = None,
) -> nn.Module:
    """Train ``model`` with Adam on the cross-entropy, ``model(**inputs)`` per minibatch.

    ``data`` is a dict of equally long tensors, as :func:`colored_digits` returns; every
    entry but ``label_key`` is passed to the model by name. The minibatch order is drawn
    from ``seed``. ``num_threads``, when given, is torch's CPU thread count while training
    (restored afterwards): 1 is often fastest for these small models on a busy machine.
    Returns the same model, trained, in eval mode.
    """
    if epochs < 0 or batch_size < 1:
        raise ConfigError(f"epochs={epochs} must be >= 0 and batch_size={batch_size} >= 1.")

    def run() -> nn.Module:
        return _train(
            model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, label_key=label_key
        )

    if num_threads is None:
        return run()
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        return run()
    finally:
        torch.set_num_threads(previous)


def _train(
    model: nn.Module,
    data: Mapping[str, Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    label_key: str,
) -> nn.Module:
    inputs, labels = _split(data, label_key)
    n = labels.shape[0]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            logits = model(**{k: v[idx] for k, v in inputs.items()})
            loss = F.cross_entropy(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data: Mapping[str, Tensor],
    *,
    batch_size: int = 1024,
    label_key: str = "label",
) -> float:
    """Fraction of examples in ``data`` that ``model(**inputs)`` classifies correctly."""
    inputs, labels = _split(data, label_key)
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, labels.shape[0], batch_size):
        logits = model(**{k: v[start : start + batch_size] for k, v in inputs.items()})
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(labels.shape[0], 1)
