"""Presets: the modality layers of common multimodal architectures, so that
``--preset vilt`` replaces ``-m text=layer:... -m image=layer:...``.

Every layer below was checked on a small-config model of each listed class
(``tests/test_presets.py``): it runs exactly once per forward pass and returns a
floating-point tensor whose first dimension is the batch, as a layer modality needs.
A preset's paths are those of the listed classes; a model that wraps one (a
LightningModule's ``model.``, a classifier holding a ``CLIPModel`` under ``clip.``)
matches too, through the unique submodule whose path ends with the preset's path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # torch-free at import: the CLI lists the presets in its help
    from torch import nn

    from ..runtime._batch import OutputSpec
    from ..measuring.modality import Modality

__all__ = ["PRESETS", "Preset", "get_preset", "preset_modalities", "preset_output", "resolve_preset_layer"]


@dataclass(frozen=True)
class Preset:
    """A known architecture: ``layers`` maps each modality name to a submodule path.

    Attributes:
        name: what ``--preset`` takes.
        layers: modality name -> dotted submodule path (as in ``model.get_submodule``).
        models: the transformers classes the paths were verified on.
        note: what the layers hold, and caveats.
        output_key: the entry of the model's output (a ModelOutput) that holds the logits.
        output_index: the element that holds them when the model returns a tuple.
        check: optional extra check of the model (raises :class:`ConfigError`).
    """

    name: str
    layers: Mapping[str, str]
    models: tuple[str, ...]
    note: str = ""
    output_key: str = "logits"
    output_index: int | None = None
    check: Callable[[nn.Module], None] | None = field(default=None, compare=False, repr=False)


def _vilt_single_image(model: nn.Module) -> None:
    # ViltForImagesAndTextClassification runs the whole ViLT backbone once per image, so with
    # num_images > 1 (NLVR2) every layer inside it runs several times per forward pass
    for path, module in model.named_modules():
        if type(module).__name__ != "ViltForImagesAndTextClassification":
            continue
        n = getattr(getattr(module, "config", None), "num_images", 1)
        if n != 1:
            where = f" (at {path!r})" if path else ""
            raise ConfigError(
                f"Preset 'vilt': this ViltForImagesAndTextClassification{where} takes "
                f"num_images={n} images and runs its ViLT backbone once per image, so no layer "
                "inside it runs once per forward pass and no layer modality can be perturbed. "
                "Perturb the images as an input instead: --modality image=input:pixel_values "
                "(a float input, shape (batch, num_images, channels, height, width))."
            )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="vilt",
            layers={
                "text": "vilt.embeddings.text_embeddings",
                "image": "vilt.embeddings.patch_embeddings",
            },
            models=(
                "ViltForQuestionAnswering",
                "ViltForImagesAndTextClassification",
                "ViltForImageAndTextRetrieval",
            ),
            note=(
                "text: token embeddings after position/type embeddings and LayerNorm, "
                "(batch, tokens, hidden); image: patch projection, (batch, hidden, h/patch, "
                "w/patch). ViltForImagesAndTextClassification needs num_images=1."
            ),
            check=_vilt_single_image,
        ),
        Preset(
            name="visualbert",
            layers={
                "text": "visual_bert.embeddings.word_embeddings",
                "image": "visual_bert.embeddings.visual_projection",
            },
            models=("VisualBertForQuestionAnswering", "VisualBertForVisualReasoning"),
            note=(
                "text: word embeddings, (batch, tokens, hidden); image: the projected region "
                "features visual_embeds, (batch, regions, hidden); both before the shared "
                "position/type embeddings and LayerNorm, which mix the two."
            ),
        ),
        Preset(
            name="clip",
            layers={"text": "text_model.embeddings", "image": "vision_model.embeddings"},
            models=("CLIPModel",),
            note=(
                "for classifiers built on a CLIPModel (e.g. a head on its text and image "
                "features; the CLIPModel may sit under any attribute). text: (batch, tokens, "
                "hidden); image: patch + class embeddings, (batch, patches + 1, hidden)."
            ),
        ),
        Preset(
            name="siglip",
            layers={"text": "text_model.embeddings", "image": "vision_model.embeddings"},
            models=("SiglipModel",),
            note=(
                "for classifiers built on a SiglipModel (under any attribute). text: (batch, "
                "tokens, hidden); image: patch embeddings, (batch, patches, hidden)."
            ),
        ),
        Preset(
            name="lxmert",
            layers={"text": "lxmert.embeddings", "image": "lxmert.encoder.visn_fc"},
            models=("LxmertForQuestionAnswering",),
            note=(
                "text: token embeddings, (batch, tokens, hidden); image: the encoded region "
                "features and boxes, (batch, regions, hidden). Its logits are under "
                "question_answering_score, which the preset reads."
            ),
            output_key="question_answering_score",
        ),
    )
}


def _preset_list() -> str:
    return "; ".join(
        f"{p.name} ({', '.join(f'{m}={path}' for m, path in p.layers.items())})"
        for p in PRESETS.values()
    )


def resolve_preset_layer(module: nn.Module, path: str, *, preset: str = "", modality: str = "") -> str:
    """The submodule path of ``module`` that a preset's ``path`` names: ``path`` itself, else
    the unique submodule whose path ends with ``"." + path`` (a wrapped model)."""
    names = [n for n, _ in module.named_modules() if n]
    if path in names:
        return path
    found = [n for n in names if n.endswith("." + path)]
    what = f"Preset {preset!r}: modality {modality!r} needs" if preset else "Need"
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(
            f"{what} the submodule {path!r}, which this {type(module).__name__} does not have "
            "(nor one ending in it). The preset does not fit this model: name the layers with "
            "--modality NAME=layer:PATH instead (`biasscope layers MODEL --data DATA` lists "
            "them), or choose another preset: " + _preset_list() + "."
        )
    raise ConfigError(
        f"{what} the submodule {path!r}, and this {type(module).__name__} has several that "
        f"end in it ({', '.join(found)}). Name the layers with --modality NAME=layer:PATH."
    )


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (case-insensitive); a :class:`ConfigError` listing the
    presets when there is none."""
    preset = PRESETS.get(str(name).strip().lower())
    if preset is None:
        raise ConfigError(
            f"Unknown preset {name!r}. Presets: {_preset_list()}. For another architecture "
            "name the layers with --modality NAME=layer:PATH (`biasscope layers MODEL --data "
            "DATA` lists them)."
        )
    return preset


def preset_output(name: str, *, key: str | None = None, index: int | None = None) -> OutputSpec:
    """Where the logits of preset ``name``'s models are; ``key`` / ``index`` given by the
    user win over the preset's."""
    from ..runtime._batch import OutputSpec

    preset = get_preset(name)
    return OutputSpec(
        key=key if key is not None else preset.output_key,
        index=index if index is not None else preset.output_index,
    )


def preset_modalities(name: str, module: nn.Module) -> list[Modality]:
    """The layer modalities of preset ``name`` on ``module``.

    Raises:
        ConfigError: an unknown preset (the message lists them), a layer the model lacks
            (the message names the missing path), or a model the preset cannot serve.
    """
    from ..measuring.modality import Modality

    preset = get_preset(name)
    modalities = [
        Modality(m, layer=resolve_preset_layer(module, path, preset=preset.name, modality=m))
        for m, path in preset.layers.items()
    ]
    if preset.check is not None:
        preset.check(module)
    return modalities
