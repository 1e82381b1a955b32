"""How each route's model is trained, saved and loaded back: a state dict (``--factory``), a
Hugging Face ``save_pretrained`` folder, a Lightning ``.ckpt`` written by ``Trainer``, a
TorchScript archive and a ``torch.export`` ``.pt2``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import _real_zoo_models as zm
from _real_zoo import FACTORY_FILE, Arch, inputs_of, train

#: the file (or folder) each route saves its model as
MODEL_NAME = {"state_dict": "model.pt", "hf": "model", "lightning": "model.ckpt",
              "torchscript": "model.pt", "export": "model.pt2"}


def train_for_route(arch: Arch, model: nn.Module, data: dict[str, Tensor], *, seed: int, workdir: Path) -> nn.Module:
    """Train ``model`` (with a Lightning ``Trainer`` for the Lightning route)."""
    if arch.route == "lightning":
        return _train_lightning(arch, model, data, seed=seed, workdir=workdir)
    return train(model, data, steps=arch.steps, lr=arch.lr, seed=seed)


def _lightning_module(net: nn.Module, lr: float) -> Any:
    import lightning

    class ZooModule(lightning.LightningModule):
        """A LightningModule that keeps its network as ``self.model`` (keys ``model.*``)."""

        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"lr": lr})
            self.model = net

        def forward(self, **inputs: Tensor) -> Tensor:
            return self.model(**inputs)

        def training_step(self, batch: dict[str, Tensor], _: int) -> Tensor:
            return torch.nn.functional.cross_entropy(self(**inputs_of(batch)), batch["label"])

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=lr)

    return ZooModule()


def _train_lightning(arch: Arch, net: nn.Module, data: dict[str, Tensor], *, seed: int, workdir: Path) -> nn.Module:
    import lightning

    rows = [{k: v[i] for k, v in data.items()} for i in range(len(data["label"]))]
    loader = torch.utils.data.DataLoader(rows, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    module = _lightning_module(net, arch.lr)
    trainer = lightning.Trainer(
        max_steps=arch.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(workdir),
    )
    trainer.fit(module, loader)
    trainer.save_checkpoint(str(workdir / MODEL_NAME["lightning"]))
    return net.eval()


def save_in_route(arch: Arch, model: nn.Module, val: dict[str, Tensor], folder: Path) -> str:
    """Save the trained model as its route does (the Lightning ``.ckpt`` is already written);
    returns the file or folder name."""
    name = MODEL_NAME[arch.route]
    dest = folder / name
    if arch.route == "state_dict":
        torch.save(model.state_dict(), dest)
    elif arch.route == "hf":
        model.save_pretrained(dest)
    elif arch.route == "torchscript":
        torch.jit.save(torch.jit.script(model), str(dest))
    elif arch.route == "export":
        example = {k: v[:8] for k, v in inputs_of(val).items()}
        dynamic = {k: {0: torch.export.Dim.AUTO} for k in example}
        torch.export.save(torch.export.export(model, (), example, dynamic_shapes=dynamic), str(dest))
    return name


def factory_flag(arch: Arch) -> list[str]:
    """The CLI's ``--factory`` for the routes that need one."""
    return ["--factory", f"{FACTORY_FILE}:{arch.build}"] if arch.needs_factory else []


def load_back(arch: Arch, path: str | Path) -> Any:
    """Load a model of this route through biasscope's own loader (callable as ``model(**batch)``)."""
    import biasscope as bs

    factory = f"{FACTORY_FILE}:{arch.build}" if arch.needs_factory else None
    return bs.load_model(str(path), factory=factory).module


def api_modalities(arch: Arch, module: nn.Module) -> tuple[list[Any], Any]:
    """The modalities (and output spec) the CLI flags of ``arch.sites`` name, for the Python API."""
    import biasscope as bs
    from biasscope.io.presets import preset_modalities, preset_output

    if arch.sites[0] == "--preset":
        return preset_modalities(arch.sites[1], module), preset_output(arch.sites[1])
    mods = []
    for flag in arch.sites[1::2]:
        name, site = flag.split("=", 1)
        where, target = site.split(":", 1)
        mods.append(bs.Modality(name, **{where: target}))
    return mods, None


def logits_fn(module: Any) -> Any:
    """``module`` as a function of keyword inputs returning logits (for the accuracy checks)."""
    return lambda **inputs: zm.logits_of(module(**inputs))
