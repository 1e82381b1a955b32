"""The real-model zoo's architectures, from tiny random configs (no download), and the
no-argument factories that ``biasscope --factory benchmarks/_real_zoo_models.py:NAME`` calls.

Every model maps a dict batch (the keys of :mod:`_real_zoo`'s data) to 4-class logits (or a
``ModelOutput`` holding them). The sizes are fixed here so that a factory rebuilds exactly
the trained architecture.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

CLASSES = 4
VOCAB = 32
TEXT_LEN = 8
TABULAR = 8
REGIONS, REGION_DIM = 5, 12
AUDIO = 400
_TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


class SmallCNN(nn.Module):
    """A two-convolution image encoder: (n, 3, H, W) -> (n, width)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, width), nn.ReLU(),
        )

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)


class LateFusion(nn.Module):
    """CNN image encoder + GRU text encoder + MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = SmallCNN(16)
        self.text_embed = nn.Embedding(VOCAB, 16)
        self.text_encoder = nn.GRU(16, 16, batch_first=True)
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, CLASSES))

    def forward(self, image: Tensor, input_ids: Tensor) -> Tensor:
        _, hidden = self.text_encoder(self.text_embed(input_ids))
        return self.head(torch.cat([self.image_encoder(image), hidden[-1]], dim=1))


class ImageTabular(nn.Module):
    """CNN image encoder + MLP tabular encoder + linear head (the Lightning, TorchScript and
    ``.pt2`` models)."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = SmallCNN(16)
        self.tabular_encoder = nn.Sequential(nn.Linear(TABULAR, 16), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, CLASSES))

    def forward(self, image: Tensor, tabular: Tensor) -> Tensor:
        return self.head(torch.cat([self.image_encoder(image), self.tabular_encoder(tabular)], dim=1))


class BertTabular(nn.Module):
    """A tiny BERT ([CLS] state) + tabular MLP + head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(**_TINY, vocab_size=VOCAB, max_position_embeddings=16),
                              add_pooling_layer=False)
        self.tabular_encoder = nn.Sequential(nn.Linear(TABULAR, 16), nn.ReLU())
        self.head = nn.Linear(48, CLASSES)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor, tabular: Tensor) -> Tensor:
        text = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state[:, 0]
        return self.head(torch.cat([text, self.tabular_encoder(tabular)], dim=1))


class Wav2Vec2Text(nn.Module):
    """A tiny Wav2Vec2 (mean of its frames) + a bag-of-embeddings text encoder + head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        cfg = Wav2Vec2Config(
            **_TINY, conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), conv_bias=True,
            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, mask_time_prob=0.0,
            feat_proj_dropout=0.0, activation_dropout=0.0, layerdrop=0.0, final_dropout=0.0,
        )
        self.audio = Wav2Vec2Model(cfg)
        self.text_embed = nn.Embedding(VOCAB, 16)
        self.head = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, CLASSES))

    def forward(self, input_values: Tensor, input_ids: Tensor) -> Tensor:
        audio = self.audio(input_values).last_hidden_state.mean(1)
        return self.head(torch.cat([audio, self.text_embed(input_ids).mean(1)], dim=1))


class ClipClassifier(nn.Module):
    """A head on CLIPModel's text and image features (as users build on CLIP)."""

    def __init__(self) -> None:
        super().__init__()
        import transformers

        text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    vocab_size=VOCAB, max_position_embeddings=16, bos_token_id=1, eos_token_id=2,
                    pad_token_id=0)
        vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      image_size=32, patch_size=8)
        self.clip = transformers.CLIPModel(
            transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        self.head = nn.Linear(32, CLASSES)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor) -> Tensor:
        text = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        image = self.clip.get_image_features(pixel_values=pixel_values)
        text = getattr(text, "pooler_output", text)  # transformers 5 returns an output object
        image = getattr(image, "pooler_output", image)
        return self.head(torch.cat([text, image], dim=1))


def vilt() -> nn.Module:
    from transformers import ViltConfig, ViltForQuestionAnswering

    return ViltForQuestionAnswering(ViltConfig(
        **_TINY, image_size=32, patch_size=8, vocab_size=VOCAB, max_position_embeddings=16,
        num_labels=CLASSES, max_image_length=-1, pad_token_id=0))


def visualbert() -> nn.Module:
    from transformers import VisualBertConfig, VisualBertForQuestionAnswering

    return VisualBertForQuestionAnswering(VisualBertConfig(
        **_TINY, vocab_size=VOCAB, max_position_embeddings=16, visual_embedding_dim=REGION_DIM,
        num_labels=CLASSES))


def lxmert() -> nn.Module:
    from transformers import LxmertConfig, LxmertForQuestionAnswering

    return LxmertForQuestionAnswering(LxmertConfig(
        hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB,
        max_position_embeddings=16, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=REGION_DIM,
        visual_pos_dim=4, num_qa_labels=CLASSES, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0))


# the factories --factory names (no arguments)
def late_fusion() -> nn.Module:
    return LateFusion()


def image_tabular() -> nn.Module:
    return ImageTabular()


def bert_tabular() -> nn.Module:
    return BertTabular()


def wav2vec2_text() -> nn.Module:
    return Wav2Vec2Text()


def clip() -> nn.Module:
    return ClipClassifier()


def logits_of(output: Any) -> Tensor:
    """The logits in a model's output (a tensor, or a ModelOutput / dict)."""
    if isinstance(output, Tensor):
        return output
    for key in ("logits", "question_answering_score"):
        if key in output:
            return output[key]
    raise TypeError(f"no logits in {type(output).__name__}")
