"""The training-time monitor (biasscope.monitoring.monitor): audits a fixed batch every N steps; a
modality ignored by construction keeps share 0 and the verdict ``ignored`` at every step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from biasscope import ConfigError, Modality, Monitor
from biasscope.monitoring.monitor import (
    MONITOR_OPTIONS, MonitorRecord, batch_to_device, verdict_code,
)

from planted import DictBranches, dict_data

MODS = [Modality("a", input="m0"), Modality("b", input="m1")]


def _train(model, monitor, steps):
    data = dict_data(n=32, batch=32, seed=1)[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps + 1):
        monitor.step(step)
        loss = F.cross_entropy(model(m0=data["m0"], m1=data["m1"]), data["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_monitor_audits_every_n_steps_and_keeps_an_ignored_modality_at_zero():
    model = DictBranches(ignore=(1,)).train()
    monitor = Monitor(model, dict_data(n=48, batch=48)[0], MODS, every=3)
    _train(model, monitor, steps=7)
    assert [r.step for r in monitor.history] == [0, 3, 6]
    for record in monitor.history:
        assert record.shares["b"] == 0.0 and record.shares["a"] == pytest.approx(1.0)
        assert record.verdicts["b"] == "ignored"
        assert record.seconds > 0
    assert model.training  # the audit restores the mode
    assert monitor.options.samples == MONITOR_OPTIONS["samples"] and not monitor.options.shapley
    assert monitor.seconds == pytest.approx(sum(r.seconds for r in monitor.history))
    assert monitor.last_result is not None and monitor.last_result.n_examples == 48


def test_a_step_is_audited_once_and_metrics_are_flat_numbers():
    model = DictBranches().eval()
    monitor = Monitor(model, dict_data(n=32, batch=32)[0], MODS, every=2)
    assert monitor.step(2) is not None and monitor.step(2) is None and monitor.step(3) is None
    metrics = monitor.history[0].metrics()
    assert set(metrics) == {f"biasscope/{kind}/{name}" for kind in ("share", "reliance", "verdict") for name in "ab"}
    assert metrics["biasscope/share/a"] + metrics["biasscope/share/b"] == pytest.approx(1.0)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert metrics["biasscope/verdict/a"] == verdict_code(monitor.history[0].verdicts["a"])


def test_verdict_codes_are_ordered_and_unmeasured_reliance_is_not_logged():
    assert [verdict_code(v) for v in ("ignored", "unused", "weak", "ok", "dominant")] == [0, 1, 2, 3, 4]
    record = MonitorRecord(5, {"a": 0.7, "b": 0.3}, {"a": None, "b": None}, {"a": "ok", "b": "weak"}, "", 0.1)
    assert record.metrics(prefix="bias") == {
        "bias/share/a": 0.7, "bias/verdict/a": 3.0, "bias/share/b": 0.3, "bias/verdict/b": 2.0,
    }


def test_audit_inside_inference_mode_still_gets_gradients():
    model = DictBranches(ignore=(1,)).eval()
    monitor = Monitor(model, dict_data(n=32, batch=32)[0], MODS, every=None)
    with torch.inference_mode():
        record = monitor.audit_now(10)
    assert monitor.step(0) is None  # every=None: only audit_now audits
    assert record.step == 10 and record.shares["b"] == 0.0
    fisher = monitor.last_result["a"].fisher_bound.mean
    assert fisher > 0  # the bound needs gradients


def test_trajectory_html_has_one_line_per_modality_and_measure(tmp_path):
    model = DictBranches(ignore=(1,)).eval()
    monitor = Monitor(model, dict_data(n=32, batch=32)[0], MODS, every=1)
    for step in range(3):
        monitor.step(step)
    fig = monitor.figure()
    names = [trace.name for trace in fig.data]
    assert names == ["a: sensitivity", "a: reliance", "b: sensitivity", "b: reliance"]
    assert list(fig.data[2].y) == [0.0, 0.0, 0.0] and list(fig.data[0].x) == [0, 1, 2]
    path = monitor.write_html(tmp_path / "trajectory.html", plotlyjs="cdn")
    text = path.read_text()
    assert "b: sensitivity" in text and path.stat().st_size < 100_000  # plotly.js from the CDN
    assert monitor.write_html(tmp_path / "offline.html").stat().st_size > 1_000_000  # inline


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_bad_every_is_a_config_error(every):
    with pytest.raises(ConfigError, match="every must be a positive integer"):
        Monitor(DictBranches(), dict_data()[0], MODS, every=every)


def test_options_are_checked_at_construction():
    with pytest.raises(ConfigError, match="samples"):
        Monitor(DictBranches(), dict_data()[0], MODS, samples=1)


def test_batch_to_device_keeps_the_structure():
    batch = {"x": torch.ones(2), "y": (torch.zeros(1), [torch.ones(1)]), "name": "n"}
    moved = batch_to_device(batch, "cpu")
    assert isinstance(moved["y"], tuple) and isinstance(moved["y"][1], list) and moved["name"] == "n"
    assert torch.equal(moved["x"], batch["x"])


def test_the_callback_modules_import_no_framework_until_used():
    import subprocess
    import sys

    code = ("import sys, biasscope, biasscope.monitoring.monitor, biasscope.monitoring.lightning_monitor, biasscope.monitoring.hf_monitor; "
            "print(sorted({'lightning', 'pytorch_lightning', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_missing_framework_says_which_extra_to_install(monkeypatch):
    import sys

    from biasscope.monitoring import hf_monitor, lightning_monitor

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"biasscope\[hf\]"):
        hf_monitor.__getattr__("HFMonitor")
    monkeypatch.setitem(sys.modules, "lightning.pytorch.callbacks", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning.callbacks", None)
    with pytest.raises(ConfigError, match=r"biasscope\[lightning\]"):
        lightning_monitor.__getattr__("LightningMonitor")
