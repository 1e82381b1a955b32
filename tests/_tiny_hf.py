"""Small-config `transformers` multimodal models and matching batches (no download), for the
preset and Hugging Face tests. Every builder seeds its own initialisation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

VOCAB = 32
TEXT_LEN = 8
IMAGE = 32
CLASSES = 4

_COMMON = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run on one intra-op thread: tiny models spend most of their time in thread hand-offs
    otherwise (several times slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval()


def vilt_config(**overrides: Any) -> Any:
    from transformers import ViltConfig

    kw = dict(
        _COMMON, image_size=IMAGE, patch_size=8, vocab_size=VOCAB, max_position_embeddings=16,
        num_labels=CLASSES, max_image_length=-1, pad_token_id=0,
    )
    kw.update(overrides)
    return ViltConfig(**kw)


def vilt(cls_name: str = "ViltForQuestionAnswering", *, seed: int = 0, **overrides: Any) -> nn.Module:
    import transformers

    cls = getattr(transformers, cls_name)
    return _seeded(lambda: cls(vilt_config(**overrides)), seed)


def text_batch(n: int, g: torch.Generator, label: Tensor | None = None) -> dict[str, Tensor]:
    """Token ids with a [CLS]=1 first, variable length (padding 0, masked), two segments."""
    ids = torch.randint(6, VOCAB, (n, TEXT_LEN), generator=g)
    ids[:, 0] = 1
    if label is not None:
        ids[:, 1] = 2 + label  # the answer, in plain sight: a language shortcut
    lengths = torch.randint(4, TEXT_LEN + 1, (n,), generator=g)
    mask = (torch.arange(TEXT_LEN)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    types = ((torch.arange(TEXT_LEN)[None, :] >= 3).long() * mask)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def vilt_batch(n: int, *, seed: int = 0, shortcut: bool = True, images: int = 0) -> dict[str, Tensor]:
    """A ViLT batch whose label is written in the question (token 2 + label) when ``shortcut``;
    the image is noise. ``images`` > 0 adds the num_images dimension
    (ViltForImagesAndTextClassification)."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, CLASSES, (n,), generator=g)
    batch = text_batch(n, g, label if shortcut else None)
    shape = (n, images) if images else (n,)
    batch["pixel_values"] = torch.randn(*shape, 3, IMAGE, IMAGE, generator=g)
    batch["pixel_mask"] = torch.ones(*shape, IMAGE, IMAGE, dtype=torch.long)
    batch["label"] = label
    return batch


def visualbert(cls_name: str = "VisualBertForQuestionAnswering", *, seed: int = 0) -> nn.Module:
    import transformers
    from transformers import VisualBertConfig

    cfg = VisualBertConfig(
        **_COMMON, vocab_size=VOCAB, max_position_embeddings=16, visual_embedding_dim=12,
        num_labels=CLASSES if cls_name.endswith("QuestionAnswering") else 2,
    )
    return _seeded(lambda: getattr(transformers, cls_name)(cfg), seed)


def visualbert_batch(n: int, *, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = text_batch(n, g)
    batch["visual_embeds"] = torch.randn(n, 5, 12, generator=g)
    batch["visual_attention_mask"] = torch.ones(n, 5, dtype=torch.long)
    batch["visual_token_type_ids"] = torch.ones(n, 5, dtype=torch.long)
    batch["label"] = torch.randint(0, CLASSES, (n,), generator=g)
    return batch


def lxmert(*, seed: int = 0) -> nn.Module:
    from transformers import LxmertConfig, LxmertForQuestionAnswering

    cfg = LxmertConfig(
        hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB,
        max_position_embeddings=16, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=12,
        visual_pos_dim=4, num_qa_labels=CLASSES,
    )
    return _seeded(lambda: LxmertForQuestionAnswering(cfg), seed)


def lxmert_batch(n: int, *, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = text_batch(n, g)
    batch["visual_feats"] = torch.randn(n, 5, 12, generator=g)
    batch["visual_pos"] = torch.rand(n, 5, 4, generator=g)
    batch["label"] = torch.randint(0, CLASSES, (n,), generator=g)
    return batch


class DualEncoderClassifier(nn.Module):
    """A classifier as users build on CLIP / SigLIP: a head on the concatenated text and image
    features of a dual encoder kept under ``backbone``."""

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(2 * dim, CLASSES)

    def forward(self, input_ids: Tensor, pixel_values: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        text = self.backbone.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        image = self.backbone.get_image_features(pixel_values=pixel_values)
        text = getattr(text, "pooler_output", text)  # transformers 5 returns an output object
        image = getattr(image, "pooler_output", image)
        return self.head(torch.cat([text, image], dim=1))


def _dual_configs(kind: str) -> Any:
    import transformers

    text = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=16,
    )
    vision = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=IMAGE, patch_size=8,
    )
    text.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # inside the small vocabulary
    if kind == "clip":
        return transformers.CLIPModel(
            transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        ), 16
    return transformers.SiglipModel(
        transformers.SiglipConfig(text_config=text, vision_config=vision)
    ), 32


def dual_encoder(kind: str = "clip", *, seed: int = 0) -> nn.Module:
    def build() -> nn.Module:
        backbone, dim = _dual_configs(kind)
        return DualEncoderClassifier(backbone, dim)

    return _seeded(build, seed)


def dual_batch(n: int, *, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = text_batch(n, g)
    del batch["token_type_ids"]
    batch["pixel_values"] = torch.randn(n, 3, IMAGE, IMAGE, generator=g)
    batch["label"] = torch.randint(0, CLASSES, (n,), generator=g)
    return batch
