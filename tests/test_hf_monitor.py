"""The Hugging Face callback (biasscope.monitoring.hf_monitor) in a real ``transformers`` Trainer: it
audits a fixed batch during ``train()`` and its metrics reach the TensorBoard event files
through ``Trainer.log`` (as every ``report_to`` integration gets them)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("accelerate")  # the Trainer needs it (biasscope[hf] installs it)
transformers = pytest.importorskip("transformers")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from biasscope import ConfigError, HFMonitor, Modality  # noqa: E402
from biasscope.monitoring.monitor import verdict_code  # noqa: E402

from planted import DictBranches, dict_data  # noqa: E402

MODS = [Modality("a", input="m0"), Modality("b", input="m1")]


class Classifier(DictBranches):
    """The Trainer's calling convention: ``model(m0=, m1=, labels=)`` returns the loss too."""

    def forward(self, m0, m1, labels=None):  # type: ignore[override]
        logits = super().forward(m0=m0, m1=m1)
        return logits if labels is None else {"loss": F.cross_entropy(logits, labels), "logits": logits}


def _rows(n, seed):
    whole = dict_data(n=n, batch=n, seed=seed)[0]
    return [{"m0": whole["m0"][i], "m1": whole["m1"][i], "labels": whole["label"][i]} for i in range(n)]


def _trainer(tmp_path, eval_dataset=None, **args):
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=5, per_device_train_batch_size=16, learning_rate=0.1,
        report_to=["tensorboard"], logging_steps=100, save_strategy="no",
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, **args,
    )
    torch.manual_seed(0)
    return transformers.Trainer(model=Classifier(ignore=(1,)), args=arguments, train_dataset=_rows(128, seed=2),
                                eval_dataset=eval_dataset)


def _scalars(folder):
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard events under {folder}"
    acc = event_accumulator.EventAccumulator(str(files[0].parent)).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_callback_logs_shares_and_verdicts_to_tensorboard(tmp_path):
    batch = {**dict_data(n=32, batch=32)[0]}
    batch["labels"] = batch.pop("label")
    trainer = _trainer(tmp_path)
    monitor = HFMonitor(batch, MODS, every=2, html=tmp_path / "trajectory.html").attach(trainer)
    trainer.train()
    assert [r.step for r in monitor.history] == [0, 2, 4]
    scalars = _scalars(tmp_path / "out")  # TensorBoard writes under output_dir/runs/
    # HF's TensorBoard callback puts training logs under train/
    assert [s for s, _ in scalars["train/biasscope/share/b"]] == [0, 2, 4]
    assert all(v == 0.0 for _, v in scalars["train/biasscope/share/b"])
    assert all(v == pytest.approx(1.0) for _, v in scalars["train/biasscope/share/a"])
    assert all(v == verdict_code("ignored") for _, v in scalars["train/biasscope/verdict/b"])
    reliance = [v for _, v in scalars["train/biasscope/reliance/a"]]
    assert reliance == pytest.approx([r.reliance["a"] for r in monitor.history])
    logged = [e for e in trainer.state.log_history if "biasscope/share/a" in e]
    assert [e["step"] for e in logged] == [0, 2, 4]  # state.log_history (every integration) has them
    assert "b: sensitivity" in (tmp_path / "trajectory.html").read_text()


def test_every_none_audits_after_each_evaluation(tmp_path):
    batch = {**dict_data(n=32, batch=32)[0]}
    batch["labels"] = batch.pop("label")
    trainer = _trainer(tmp_path, eval_dataset=_rows(32, seed=3), eval_strategy="steps", eval_steps=2)
    monitor = HFMonitor(batch, MODS, every=None).attach(trainer)
    trainer.train()
    assert [r.step for r in monitor.history] == [2, 4, 5]  # the Trainer also evaluates at the end
    assert monitor.monitor.last_result["a"].fisher_bound.mean > 0


def test_the_callback_is_a_real_trainer_callback_and_must_be_attached(tmp_path):
    assert issubclass(HFMonitor, transformers.TrainerCallback)
    trainer = _trainer(tmp_path)
    trainer.add_callback(HFMonitor(dict_data()[0], MODS))
    with pytest.raises(ConfigError, match=r"attach\(trainer\)"):
        trainer.train()
