"""fix(): exact resume after an interruption, the caller's model untouched, devices,
calibrated lambda, early stopping, and the planted model it repairs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biasscope import ConfigError, Modality
from biasscope.fixing._checkpoint import CheckpointStore
from biasscope.fixing.fix import CHECKPOINT_NAME, FixInterrupted, FixResult, fix
from biasscope.fixing.regularizer import FunctionalEntropyRegularizer

MODS = [Modality("a", input="a"), Modality("b", input="b")]


class GatedNet(nn.Module):
    """Two encoders, dropout, a linear head; ``b``'s encoder output is scaled by ``gate``."""

    def __init__(self, gate: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.enc_a = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
            self.enc_b = nn.Sequential(nn.Linear(3, 8), nn.Tanh())
            self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 3))
        self.gate = nn.Parameter(torch.tensor(float(gate)))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.enc_a(a), self.gate * self.enc_b(b)], dim=1))


def batches(n: int = 64, size: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g)
    wa, wb = torch.randn(4, 3, generator=g), torch.randn(3, 3, generator=g)
    label = (a @ wa + 1.5 * b @ wb).argmax(dim=1)
    return [
        {"a": a[i : i + size], "b": b[i : i + size], "label": label[i : i + size]}
        for i in range(0, n, size)
    ]


FAST = dict(samples=3, seed=4, lr=1e-2, device="cpu", lambda_="auto")  # the regularizer on


def same_parameters(m1: nn.Module, m2: nn.Module) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_resume_equals_uninterrupted(tmp_path):
    train, val = batches(), batches(32, seed=1)
    # guard off: this test is about resume (at the defaults the guard may stop the tiny run)
    opts = dict(
        FAST, val_data=val, epochs=5, max_steps=11, eval_every=2, checkpoint_every=3, guard=False
    )
    full = fix(GatedNet(), train, MODS, checkpoint_dir=tmp_path / "full", **opts)

    def stop_at_8(stage, done, total, record):
        if record["step"] == 8:
            raise KeyboardInterrupt

    with pytest.raises(FixInterrupted) as info:
        fix(GatedNet(), train, MODS, checkpoint_dir=tmp_path / "cut", progress=stop_at_8, **opts)
    partial = info.value.result
    assert isinstance(info.value, KeyboardInterrupt)
    assert partial.interrupted and partial.steps == 8
    ckpt = CheckpointStore(tmp_path / "cut").load()["trainer"]
    assert ckpt["step"] == 6  # the last complete checkpoint before the interrupt
    assert not [
        p for p in (tmp_path / "cut").iterdir() if p.name != CHECKPOINT_NAME
    ]  # no temp files

    resumed = fix(GatedNet(), train, MODS, checkpoint_dir=tmp_path / "cut", resume=True, **opts)
    assert resumed.steps == full.steps == 11 and not resumed.interrupted
    assert same_parameters(resumed.model, full.model)
    assert resumed.history == full.history
    assert resumed.lambda_value == full.lambda_value and resumed.best_step == full.best_step


def test_resume_across_an_epoch_boundary_without_validation(tmp_path):
    train = batches()  # 4 batches per epoch, reshuffled by example each epoch
    opts = dict(FAST, epochs=3, checkpoint_every=4, lambda_=0.5)
    full = fix(GatedNet(), train, MODS, **opts)

    def stop_at_6(stage, done, total, record):
        if record["step"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(FixInterrupted):
        fix(GatedNet(), train, MODS, checkpoint_dir=tmp_path, progress=stop_at_6, **opts)
    with pytest.raises(ConfigError, match="lr"):  # other settings: refused, not silently mixed
        fix(GatedNet(), train, MODS, checkpoint_dir=tmp_path, resume=True, **{**opts, "lr": 0.1})
    resumed = fix(GatedNet(), train, MODS, checkpoint_dir=tmp_path, resume=True, **opts)
    assert resumed.steps == full.steps == 12
    assert same_parameters(resumed.model, full.model)
    assert [h["epoch"] for h in resumed.history] == [0] * 4 + [1] * 4 + [2] * 4
    assert resumed.history == full.history


def test_input_model_is_unchanged_and_result_is_a_copy():
    model = GatedNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    result = fix(model, batches(), MODS, max_steps=5, **FAST)
    assert isinstance(result, FixResult) and result.model is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not same_parameters(result.model, model)  # the copy did train
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is left alone
    assert not result.model.training


@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"
)  # torch.jit is deprecated, still supported
def test_torchscript_model_is_copied():
    scripted = torch.jit.script(GatedNet())
    before = {k: v.clone() for k, v in scripted.state_dict().items()}
    result = fix(scripted, batches(), MODS, max_steps=3, **FAST)
    assert all(torch.equal(before[k], v) for k, v in scripted.state_dict().items())
    assert not same_parameters(result.model, scripted)


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_devices(device):
    opts = {**FAST, "device": device}
    result = fix(GatedNet(), batches(), MODS, max_steps=3, **opts)
    expected = "cuda" if torch.cuda.is_available() and device == "auto" else "cpu"
    assert result.device.startswith(expected)
    assert len(result.history) == 3 and all(
        torch.isfinite(torch.tensor(h["loss"])) for h in result.history
    )
    if expected == "cpu":  # "auto" on a CPU-only machine is exactly "cpu"
        reference = fix(GatedNet(), batches(), MODS, max_steps=3, **FAST)
        assert same_parameters(result.model, reference.model)


def test_amp_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="amp"):
        fix(GatedNet(), batches(), MODS, amp=True, **FAST)


def test_auto_lambda_is_calibrated_and_reported():
    result = fix(GatedNet(gate=0.1), batches(), MODS, max_steps=2, target_ratio=0.3, **FAST)
    cal = result.calibration
    assert cal is not None and cal["lambda"] == result.lambda_value > 0
    assert cal["gradient_ratio"] == pytest.approx(0.3, rel=1e-6)
    assert all(h["lambda"] == result.lambda_value for h in result.history)
    fixed = fix(GatedNet(), batches(), MODS, max_steps=2, **{**FAST, "lambda_": 0.7})
    assert fixed.calibration is None and fixed.lambda_value == 0.7


def test_early_stopping_and_best_weights():
    # lr = 0: the validation loss never improves after the first pass
    result = fix(
        GatedNet(),
        batches(),
        MODS,
        val_data=batches(32, seed=1),
        epochs=10,
        eval_every=1,
        patience=2,
        **{**FAST, "lr": 0.0},
    )
    assert result.stopped_early and result.steps == 3 and result.best_step == 1
    assert [h["val_loss"] for h in result.history] == [result.history[0]["val_loss"]] * 3
    # restore_best keeps the best weights: their validation loss is the best recorded
    run = fix(
        GatedNet(), batches(), MODS, val_data=batches(32, seed=1), epochs=4, eval_every=1,
        restore_best=True, guard=False, **FAST,  # guard off: a trip keeps other weights
    )
    losses = [h["val_loss"] for h in run.history]
    assert run.best_step == 1 + losses.index(min(losses))
    val = batches(32, size=32, seed=1)[0]  # the same 32 examples as one batch
    with torch.no_grad():
        loss = nn.functional.cross_entropy(run.model(val["a"], val["b"]), val["label"])
    assert float(loss) == pytest.approx(min(losses), rel=1e-5)


def test_last_weights_by_default_and_one_modality_refused():
    # the same ModDrop target either way (by default it is chosen on val_data when given)
    run = fix(GatedNet(), batches(), MODS, val_data=batches(32, seed=1), epochs=2, eval_every=1, augment="b", guard=False, **FAST)
    last = fix(GatedNet(), batches(), MODS, epochs=2, augment="b", **FAST)
    assert all(torch.equal(a, b) for a, b in zip(run.model.state_dict().values(), last.model.state_dict().values()))
    with pytest.raises(ConfigError, match="at least two"):
        fix(GatedNet(), batches(), MODS[:1], epochs=1, **FAST)


def test_history_records_every_step():
    result = fix(GatedNet(), batches(), MODS, epochs=2, val_data=batches(32, seed=1), **FAST)
    assert [h["step"] for h in result.history] == list(range(1, 9))
    for h in result.history:
        assert h["loss"] == pytest.approx(h["ce"] + h["lambda"] * h["reg"], rel=1e-5)
        assert set(h["scores"]) == {"a", "b"}
    assert [("val_loss" in h) for h in result.history] == [False, False, False, True] * 2


def test_a_dataloader_works():
    data = batches()[0]
    ds = torch.utils.data.TensorDataset(data["a"], data["b"], data["label"])
    loader = torch.utils.data.DataLoader(ds, batch_size=8)  # tuple batches, label last
    mods = [Modality("a", input=0), Modality("b", input=1)]
    result = fix(GatedNet(), loader, mods, epochs=2, **{**FAST, "lambda_": 0.1})
    assert result.steps == 4


def test_sensitivity_rule_targets_the_largest_score_at_each_step():
    result = fix(
        GatedNet(gate=0.05), batches(), MODS, max_steps=3, modality_dropout=0.5,
        augment="sensitivity", **FAST,
    )
    for h in result.history:
        assert h["augmented"] == max(h["scores"], key=h["scores"].get)


def test_fix_brings_back_a_planted_ignored_modality():
    """``b`` carries label information but its gate starts tiny; fix raises its score."""
    train = batches(128, size=32)
    model = GatedNet(gate=1e-3)
    reg = FunctionalEntropyRegularizer(model.eval(), MODS, samples=4)
    with torch.no_grad():
        before = reg.scores(train[0])["b"].item()
    result = fix(model, train, MODS, epochs=8, **FAST)
    reg = FunctionalEntropyRegularizer(result.model, MODS, samples=4)
    with torch.no_grad():
        after = reg.scores(train[0])["b"].item()
    assert after > 100 * before
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def test_moddrop_on_a_named_modality_without_the_regularizer():
    train = batches()
    result = fix(
        GatedNet(), train, MODS, max_steps=4, modality_dropout=1.0, augment="b", **{**FAST, "lambda_": 0.0}
    )
    assert all(h["augmented"] == "b" and h["reg"] == 0.0 for h in result.history)
    # the term is off: the scores (detached) only on the first and the last step
    assert [sorted(h["scores"]) for h in result.history] == [["a", "b"], [], [], ["a", "b"]]
    # with every row of b permuted the model's b pathway sees no label information:
    # same data, no augmentation, gives different weights
    plain = fix(GatedNet(), train, MODS, max_steps=4, modality_dropout=0.0, **{**FAST, "lambda_": 0.0})
    assert not same_parameters(result.model, plain.model)
    with pytest.raises(ConfigError, match="augment"):
        fix(GatedNet(), train, MODS, augment="c", **FAST)
    with pytest.raises(ConfigError, match="modality_dropout"):
        fix(GatedNet(), train, MODS, modality_dropout=1.5, **FAST)
