"""The Lightning callback (biasscope.monitoring.lightning_monitor) in a real ``lightning`` Trainer: it
audits a fixed batch during ``fit`` and its metrics land in the CSV logger's metrics.csv."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

from biasscope import LightningMonitor, Modality  # noqa: E402
from biasscope.monitoring.monitor import verdict_code  # noqa: E402

from planted import DictBranches, dict_data  # noqa: E402

MODS = [Modality("a", input="m0"), Modality("b", input="m1")]


class LitBranches(pl.LightningModule):
    """A LightningModule holding a model that ignores modality ``b`` by construction."""

    def __init__(self):
        super().__init__()
        self.model = DictBranches(ignore=(1,))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.model(m0=batch["m0"], m1=batch["m1"]), batch["label"])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self.model(m0=batch["m0"], m1=batch["m1"]), batch["label"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n, seed):
    """A DataLoader of dict batches (a plain list of batches reads as several loaders)."""
    whole = dict_data(n=n, batch=n, seed=seed)[0]
    rows = [{k: v[i] for k, v in whole.items()} for i in range(n)]
    return torch.utils.data.DataLoader(rows, batch_size=16)


def _fit(tmp_path, callback, *, steps, val=None, **trainer_kw):
    logger = pl.loggers.CSVLogger(tmp_path, name="run", version=0)
    trainer = pl.Trainer(
        max_steps=steps, logger=logger, callbacks=[callback], accelerator="cpu", devices=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, **trainer_kw,
    )
    torch.manual_seed(0)
    trainer.fit(LitBranches(), train_dataloaders=_loader(128, seed=2), val_dataloaders=val)
    with open(tmp_path / "run" / "version_0" / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("biasscope/share/a")]


def test_callback_logs_shares_and_verdicts_every_n_steps_to_the_csv_logger(tmp_path):
    monitor = LightningMonitor(dict_data(n=32, batch=32)[0], MODS, every=2, submodule="model",
                               html=tmp_path / "trajectory.html")
    rows = _fit(tmp_path, monitor, steps=5)
    assert [int(r["step"]) for r in rows] == [0, 2, 4] == [h.step for h in monitor.history]
    for row, record in zip(rows, monitor.history):
        assert float(row["biasscope/share/b"]) == 0.0 == record.shares["b"]
        assert float(row["biasscope/share/a"]) == pytest.approx(1.0)
        assert float(row["biasscope/verdict/b"]) == verdict_code("ignored")
        assert float(row["biasscope/reliance/a"]) == pytest.approx(record.reliance["a"])
    assert "b: sensitivity" in (tmp_path / "trajectory.html").read_text()


def test_every_none_audits_after_each_validation_inside_inference_mode(tmp_path):
    monitor = LightningMonitor(dict_data(n=32, batch=32)[0], MODS, every=None, submodule="model")
    val = _loader(32, seed=3)
    rows = _fit(tmp_path, monitor, steps=4, val_check_interval=2, num_sanity_val_steps=1,
                limit_val_batches=1, val=val)
    assert [int(r["step"]) for r in rows] == [2, 4]  # not the sanity check
    assert all(float(r["biasscope/share/b"]) == 0.0 for r in rows)
    assert monitor.monitor.last_result["a"].fisher_bound.mean > 0  # gradients despite inference mode


def test_the_callback_is_a_real_lightning_callback_and_checks_its_options():
    assert issubclass(LightningMonitor, pl.Callback)
    from biasscope import ConfigError

    with pytest.raises(ConfigError, match="every"):
        LightningMonitor(dict_data()[0], MODS, every=0)
