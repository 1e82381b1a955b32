"""Shared fixtures. Torch runs one thread per test process: the models are tiny, and with
two test workers (pytest-xdist) or other work beside the suite more threads oversubscribe
the cores."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses the tests start inherit it

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)


class _PlantedNet(nn.Module):
    """Two modalities, ``a`` and ``b``; ``b`` is ignored by construction (never read)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.zero_()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(a)


def _planted_data(n: int = 96, dim: int = 4, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = 2.0 * torch.randn(classes, dim, generator=g)
    a = torch.randn(n, dim, generator=g)
    b = torch.randn(n, dim, generator=g)
    noisy = a @ weight.T + 0.8 * torch.randn(n, classes, generator=g)
    label = noisy.argmax(dim=1)  # integer labels the model gets mostly right
    return _PlantedNet(weight).eval(), a, b, label


def _perception_by_hand(result, model, a, b, label, repeats: int = 10, seed: int = 0):
    """Fill the permutation and Shapley fields when ``biasscope.measuring.perception`` is absent."""
    import numpy as np

    from biasscope.measuring._stats import mean_interval
    from biasscope.results import PermutationScore, ShapleyValues
    from biasscope.auditing.verdict import Thresholds, modality_verdicts, verdict_sentence

    g = torch.Generator().manual_seed(seed)
    ce = nn.functional.cross_entropy

    def scores(aa, bb):
        with torch.no_grad():
            logits = model(aa, bb)
        return float((logits.argmax(1) == label).double().mean()), float(ce(logits, label))

    acc, loss = scores(a, b)
    inputs = {"a": a, "b": b}
    for m in result.modalities:
        drops, incs = [], []
        for _ in range(repeats):
            shuffled = dict(inputs)
            shuffled[m.name] = inputs[m.name][torch.randperm(len(label), generator=g)]
            acc_p, loss_p = scores(shuffled["a"], shuffled["b"])
            drops.append(acc - acc_p)
            incs.append(loss_p - loss)
        drops_np = np.array(drops)
        m.permutation = PermutationScore(
            accuracy_drop=mean_interval(drops_np),
            relative_accuracy_drop=mean_interval(drops_np / acc),
            loss_increase=mean_interval(np.array(incs)),
            repeats=repeats,
        )
    perm = torch.randperm(len(label), generator=g)
    value = {}
    for keep_a in (False, True):
        for keep_b in (False, True):
            value[(keep_a, keep_b)] = scores(a if keep_a else a[perm], b if keep_b else b[perm])
    for k, metric in enumerate(("accuracy", "log_likelihood")):
        v = {c: (s[k] if k == 0 else -s[k]) for c, s in value.items()}
        phi_a = 0.5 * ((v[True, False] - v[False, False]) + (v[True, True] - v[False, True]))
        phi_b = 0.5 * ((v[False, True] - v[False, False]) + (v[True, True] - v[True, False]))
        singles = (v[True, False] - v[False, False]) + (v[False, True] - v[False, False])
        result.shapley.append(
            ShapleyValues(
                metric=metric,
                values={"a": phi_a, "b": phi_b},
                full=v[True, True],
                empty=v[False, False],
                interaction=v[True, True] - v[False, False] - singles,
                exact=True,
            )
        )
    result.accuracy = acc
    result.class_source = "label"
    result.settings["permutation_repeats"] = repeats
    verdicts = modality_verdicts(result.modalities, Thresholds(**result.settings["thresholds"]))
    for m in result.modalities:
        m.verdict = verdicts[m.name]
    result.sentence = verdict_sentence(verdicts)
    return result


@pytest.fixture(scope="session")
def audit_result():
    """An AuditResult of a real ``biasscope.audit`` run on a planted two-modality model
    (``a`` is read, ``b`` is ignored by construction), with integer labels, so the
    permutation and Shapley fields are filled. Shared: deep-copy it before changing it."""
    return planted_audit_result()


def planted_audit_result():
    """The AuditResult behind the ``audit_result`` fixture (callable outside pytest)."""
    from biasscope import Modality, audit

    model, a, b, label = _planted_data()
    mods = [Modality("a", input="a"), Modality("b", input="b")]
    batches = [
        {"a": a[i : i + 32], "b": b[i : i + 32], "label": label[i : i + 32]}
        for i in range(0, len(label), 32)
    ]
    try:
        import biasscope.measuring.perception  # noqa: F401
    except ImportError:
        unlabelled = [{"a": x["a"], "b": x["b"]} for x in batches]
        result = audit(model, unlabelled, mods, samples=16, seed=0, label_key=None, device="cpu", tensorization=True)
        result = _perception_by_hand(result, model, a, b, label)
        # per-class means by label (the real audit uses labels when they exist)
        import numpy as np

        lab = label.numpy()
        result.classes = sorted(int(c) for c in np.unique(lab))
        for m in result.modalities:
            m.per_class = {
                k: [float(np.asarray(v)[lab == c].mean()) for c in result.classes]
                for k, v in m.per_example.items()
            }
        return result
    return audit(model, batches, mods, samples=16, seed=0, permutation_repeats=10, device="cpu", tensorization=True)


#: output file name -> the shipped JSON Schema it follows (biasscope/results/schemas/)
SCHEMA_OF_FILE = {"audit.json": "audit", "training_log.json": "fix", "compare.json": "compare"}


@pytest.fixture(autouse=True)
def _outputs_follow_the_schema(request):
    """Every audit.json, training_log.json and compare.json of the current schema version that
    a test leaves in its tmp_path validates against the shipped JSON Schema (skipped without
    jsonschema; mark a test ``schema_invalid`` when it writes a broken one on purpose)."""
    wanted = "tmp_path" in request.fixturenames and not request.node.get_closest_marker("schema_invalid")
    root = request.getfixturevalue("tmp_path") if wanted else None
    yield
    if root is None:
        return
    import importlib.util
    import json

    if importlib.util.find_spec("jsonschema") is None:
        return
    from biasscope.results.json_schema import SCHEMAS, validate

    for name, schema in SCHEMA_OF_FILE.items():
        for path in root.rglob(name):
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # tests of unreadable files write them on purpose
            if isinstance(document, dict) and document.get("schema_version") == SCHEMAS[schema]:
                validate(document, schema)  # other versions: old or foreign files a test wrote
