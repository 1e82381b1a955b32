"""The real-model zoo: real architectures (tiny random configs) trained here on a two-modality
task with a planted shortcut, their truth measured by independent ablations, each saved in the
format of one loading route. Shared by ``real_zoo.py``, ``real_zoo_fix.py`` and the smoke test.

The task (4 classes). Each modality carries a *planted* class, equal to the label with
probability ``p`` (else uniformly random), written with strength ``amp``: a bright quadrant
or a colour of an image, a class token in the text, a class vector in region features, a class tone in a
waveform, a one-hot block in tabular features. One modality holds the *real* signal (same
``p`` everywhere), the other a *shortcut*, which is random on the decorrelated splits.

- ``shortcut`` bias: the shortcut is perfect and strong in training (p = 1), the real signal
  noisier (p = 0.8): the model learns the shortcut.
- ``real`` bias: the real signal is perfect (p = 1), the shortcut agrees only half the time
  (p = 0.5): the model learns the real signal and may ignore the shortcut.
- the unbiased *reference* of a bias is trained with the shortcut random.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import _real_zoo_models as zm

HERE = Path(__file__).resolve().parent
FACTORY_FILE = HERE / "_real_zoo_models.py"
CACHE = HERE / ".cache" / "real_zoo"
N_TRAIN, N_VAL = 768, 256
#: the seeds the unit tests and the tuning of the verdict may look at; the others are held out
DEV_SEEDS, HELD_OUT_SEEDS = (0,), (1, 2)
#: (p, amp) of (real, shortcut) per bias; the decorrelated splits draw the shortcut at random
BIASES: dict[str, dict[str, tuple[float, float]]] = {
    "shortcut": {"real": (0.8, 1.0), "shortcut": (1.0, 4.0)},
    "real": {"real": (1.0, 2.0), "shortcut": (0.5, 1.0)},
}

# --- truth: the rule -------------------------------------------------------------------------
#: a modality whose shuffling changes < 1% of predictions and costs < 1 point of accuracy is
#: ignored; one that changes >= 5% of predictions or costs >= 5 points is relied upon; between
#: the two it is partial (a practical effect too small to call either way)
IGNORED_FLIP, RELIED_FLIP = 0.01, 0.05
TRUTH_SHUFFLES = 5


def truth_label(flip: float, accuracy_drop: float) -> str:
    """The truth of one modality from its shuffle ablation (see the constants above)."""
    if flip < IGNORED_FLIP and accuracy_drop < IGNORED_FLIP:
        return "ignored"
    if flip >= RELIED_FLIP or accuracy_drop >= RELIED_FLIP:
        return "relied"
    return "partial"


# --- the architectures -------------------------------------------------------------------------
@dataclass(frozen=True)
class Arch:
    """One architecture of the zoo: its route, its two modalities (name -> data kind), which
    one is real, the data keys it takes, and how the CLI names its modalities."""

    name: str
    route: str  # state_dict | hf | lightning | torchscript | export
    build: str  # factory in _real_zoo_models
    kinds: dict[str, str]
    real: str
    keys: tuple[str, ...]
    sites: tuple[str, ...]  # CLI flags naming the modalities
    steps: int = 300
    lr: float = 2e-3

    @property
    def shortcut(self) -> str:
        return next(m for m in self.kinds if m != self.real)

    @property
    def needs_factory(self) -> bool:
        return self.route in ("state_dict", "lightning")


_TEXT = ("input_ids", "attention_mask", "token_type_ids")
ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("late_fusion", "state_dict", "late_fusion", {"image": "image16", "text": "tokens"}, "image",
         ("image", "input_ids"), ("-m", "image=input:image", "-m", "text=layer:text_embed")),
    Arch("clip", "state_dict", "clip", {"image": "image32", "text": "tokens"}, "text",
         ("pixel_values", "input_ids", "attention_mask"), ("--preset", "clip"), steps=250),
    Arch("bert_tabular", "state_dict", "bert_tabular", {"text": "tokens", "tabular": "tabular"}, "text",
         (*_TEXT, "tabular"), ("-m", "text=layer:bert.embeddings.word_embeddings", "-m", "tabular=input:tabular")),
    Arch("wav2vec2_text", "state_dict", "wav2vec2_text", {"audio": "audio", "text": "tokens"}, "audio",
         ("input_values", "input_ids"), ("-m", "audio=input:input_values", "-m", "text=layer:text_embed")),
    Arch("vilt", "hf", "vilt", {"image": "image32", "text": "tokens"}, "image",
         (*_TEXT, "pixel_values", "pixel_mask"), ("--preset", "vilt"), steps=300),
    Arch("visualbert", "hf", "visualbert", {"image": "regions", "text": "tokens"}, "image",
         (*_TEXT, "visual_embeds", "visual_attention_mask", "visual_token_type_ids"), ("--preset", "visualbert")),
    Arch("lxmert", "hf", "lxmert", {"image": "regions", "text": "tokens"}, "text",
         (*_TEXT, "visual_feats", "visual_pos"), ("--preset", "lxmert")),
    Arch("lightning", "lightning", "image_tabular", {"image": "image16", "tabular": "tabular"}, "image",
         ("image", "tabular"), ("-m", "image=input:image", "-m", "tabular=input:tabular")),
    Arch("torchscript", "torchscript", "image_tabular", {"image": "image16", "tabular": "tabular"}, "tabular",
         ("image", "tabular"), ("-m", "image=input:image", "-m", "tabular=input:tabular")),
    Arch("pt2", "export", "image_tabular", {"image": "image16", "tabular": "tabular"}, "image",
         ("image", "tabular"), ("-m", "image=input:image", "-m", "tabular=input:tabular")),
)}


# --- the data ----------------------------------------------------------------------------------
def _planted(label: Tensor, p: float, g: torch.Generator) -> Tensor:
    keep = torch.rand(label.shape, generator=g) < p
    return torch.where(keep, label, torch.randint(0, zm.CLASSES, label.shape, generator=g))


#: the colour of each class in the 32 x 32 images of the patch transformers (ViLT, CLIP)
_COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, -1.0, -1.0]])


def _image(c: Tensor, amp: float, g: torch.Generator, size: int) -> Tensor:
    """16 x 16 (the CNNs): class k brightens quadrant k; 32 x 32 (ViLT, CLIP): class k tints
    every pixel with its colour (a one-layer ViLT does not learn the quadrants in 500 steps)."""
    x = torch.randn(len(c), 3, size, size, generator=g)
    if size == 32:
        return x + amp * _COLOURS[c][:, :, None, None]
    h = size // 2
    for k in range(zm.CLASSES):
        rows, cols = divmod(k, 2)
        x[c == k, :, rows * h:(rows + 1) * h, cols * h:(cols + 1) * h] += amp
    return x


def _tokens(c: Tensor, g: torch.Generator) -> dict[str, Tensor]:
    # 0 pad, 1 [CLS]/bos, 2 eos (CLIP pools there), 6 + class the class token, 10.. fillers
    ids = torch.randint(10, zm.VOCAB, (len(c), zm.TEXT_LEN), generator=g)
    ids[:, 0], ids[:, 1], ids[:, -1] = 1, 6 + c, 2
    ones = torch.ones_like(ids)
    return {"input_ids": ids, "attention_mask": ones, "token_type_ids": torch.zeros_like(ids)}


def _modality(kind: str, c: Tensor, amp: float, g: torch.Generator) -> dict[str, Tensor]:
    n = len(c)
    if kind == "tokens":
        return _tokens(c, g)
    if kind in ("image16", "image32"):
        x = _image(c, amp / 2, g, 16 if kind == "image16" else 32)
        return {"image": x, "pixel_values": x, "pixel_mask": torch.ones(n, x.shape[-2], x.shape[-1], dtype=torch.long)}
    if kind == "tabular":
        x = torch.randn(n, zm.TABULAR, generator=g)
        x[torch.arange(n), c] += amp
        return {"tabular": x}
    if kind == "regions":
        prototypes = torch.randn(zm.CLASSES, zm.REGION_DIM, generator=torch.Generator().manual_seed(99))
        x = torch.randn(n, zm.REGIONS, zm.REGION_DIM, generator=g) + amp * prototypes[c][:, None]
        ones = torch.ones(n, zm.REGIONS, dtype=torch.long)
        return {"visual_embeds": x, "visual_feats": x, "visual_attention_mask": ones,
                "visual_token_type_ids": ones, "visual_pos": torch.rand(n, zm.REGIONS, 4, generator=g)}
    if kind == "audio":
        t = torch.arange(zm.AUDIO) / zm.AUDIO
        freq = torch.tensor([5.0, 9.0, 14.0, 20.0])[c]
        phase = 2 * math.pi * torch.rand(n, 1, generator=g)
        wave = torch.sin(2 * math.pi * freq[:, None] * t[None] + phase)
        return {"input_values": amp * wave + torch.randn(n, zm.AUDIO, generator=g)}
    raise ValueError(kind)


def make_split(arch: Arch, bias: str, *, n: int, seed: int, decorrelated: bool = False) -> dict[str, Tensor]:
    """One split: ``decorrelated`` draws the shortcut at random (the real signal unchanged)."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, zm.CLASSES, (n,), generator=g)
    batch: dict[str, Tensor] = {}
    for modality, kind in arch.kinds.items():
        role = "real" if modality == arch.real else "shortcut"
        p, amp = BIASES[bias][role]
        if role == "shortcut" and decorrelated:
            p = 0.0
        batch.update(_modality(kind, _planted(label, p, g), amp, g))
    batch = {k: v for k, v in batch.items() if k in arch.keys}
    batch["label"] = label
    return batch


def modality_keys(arch: Arch, modality: str) -> list[str]:
    """The data keys one modality writes (shuffled together by the truth ablation)."""
    probe = _modality(arch.kinds[modality], torch.zeros(2, dtype=torch.long), 1.0, torch.Generator())
    return [k for k in probe if k in arch.keys]


def split_seeds(seed: int) -> dict[str, int]:
    """Data seeds of the splits of one model seed (all distinct)."""
    return {"train": 1000 * seed + 1, "val": 1000 * seed + 2, "shift": 1000 * seed + 3, "decorrelated": 1000 * seed + 4}


# --- training and evaluation --------------------------------------------------------------------
def inputs_of(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in batch.items() if k != "label"}


@torch.no_grad()
def predict(model: Callable[..., Any], batch: dict[str, Tensor], chunk: int = 128) -> Tensor:
    """Predicted classes of a dict batch (in chunks)."""
    n = len(batch["label"])
    out = []
    for i in range(0, n, chunk):
        part = {k: v[i:i + chunk] for k, v in inputs_of(batch).items()}
        out.append(zm.logits_of(model(**part)).argmax(-1))
    return torch.cat(out)


def accuracy(model: Callable[..., Any], batch: dict[str, Tensor]) -> float:
    return float((predict(model, batch) == batch["label"]).float().mean())


def train(model: nn.Module, data: dict[str, Tensor], *, steps: int, lr: float, seed: int) -> nn.Module:
    """Adam on cross-entropy, batch 32, ``steps`` steps; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n = len(data["label"])
    for _ in range(steps):
        idx = torch.randint(0, n, (32,), generator=g)
        part = {k: v[idx] for k, v in data.items()}
        loss = F.cross_entropy(zm.logits_of(model(**inputs_of(part))), part["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def ablation(model: Callable[..., Any], arch: Arch, val: dict[str, Tensor], *, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per modality: the prediction-flip rate and the accuracy with it shuffled across the
    examples (``TRUTH_SHUFFLES`` permutations, every key of the modality moved together)."""
    clean = predict(model, val)
    base = float((clean == val["label"]).float().mean())
    g = torch.Generator().manual_seed(seed + 777)
    out = {}
    for modality in arch.kinds:
        flips, accs = [], []
        for _ in range(TRUTH_SHUFFLES):
            perm = torch.randperm(len(clean), generator=g)
            shuffled = {k: (v[perm] if k in modality_keys(arch, modality) else v) for k, v in val.items()}
            pred = predict(model, shuffled)
            flips.append(float((pred != clean).float().mean()))
            accs.append(float((pred == val["label"]).float().mean()))
        flip, acc = sum(flips) / len(flips), sum(accs) / len(accs)
        out[modality] = {"flip": flip, "shuffled_accuracy": acc, "accuracy_drop": base - acc,
                         "truth": truth_label(flip, base - acc)}
    return out


# --- the cache ---------------------------------------------------------------------------------
def code_hash() -> str:
    """Hash of the code that builds and trains the models (and the library versions)."""
    from importlib.metadata import version

    h = hashlib.sha256()
    for path in (Path(__file__), FACTORY_FILE, HERE / "_real_zoo_routes.py"):
        h.update(path.read_bytes())
    h.update(f"{torch.__version__} {version('transformers')}".encode())
    return h.hexdigest()[:12]


@dataclass
class Built:
    """A trained zoo model on disk: its folder, model path, data files and truth."""

    arch: str
    bias: str
    seed: int
    folder: str
    model: str
    truth: dict[str, Any] = field(default_factory=dict)

    def data(self, split: str) -> str:
        return str(Path(self.folder) / f"{split}.pt")


def build(arch: Arch, bias: str, seed: int, *, cache: Path = CACHE, reference: bool = False) -> Built:
    """Train (or load from the cache) one zoo model, save it in its route's format with its
    data splits, and measure its truth. ``reference``: the unbiased model of that bias."""
    from _real_zoo_routes import save_in_route, train_for_route

    tag = f"{arch.name}-{bias}{'-ref' if reference else ''}-s{seed}-{code_hash()}"
    folder = cache / tag
    record = folder / "built.json"
    if record.exists():
        return Built(**json.loads(record.read_text()))
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # an interrupted build
    tmp.mkdir(parents=True)
    seeds = split_seeds(seed)
    splits = {s: make_split(arch, bias, n=N_TRAIN if s == "train" else N_VAL, seed=seeds[s],
                            decorrelated=s in ("shift", "decorrelated") or (reference and s == "train"))
              for s in seeds}
    for name, split in splits.items():
        torch.save(split, tmp / f"{name}.pt")
    torch.manual_seed(seed)
    start = time.perf_counter()
    model = train_for_route(arch, getattr(zm, arch.build)(), splits["train"], seed=seed, workdir=tmp)
    seconds = time.perf_counter() - start
    model_name = save_in_route(arch, model, splits["val"], tmp)
    truth = {
        "train_seconds": round(seconds, 1),
        "val_accuracy": accuracy(model, splits["val"]),
        "decorrelated_accuracy": accuracy(model, splits["decorrelated"]),
        "modalities": ablation(model, arch, splits["val"], seed=seed),
    }
    built = Built(arch.name, bias, seed, str(folder), str(folder / model_name), truth)
    (tmp / "built.json").write_text(json.dumps(asdict(built), indent=1))
    tmp.rename(folder)
    return built
