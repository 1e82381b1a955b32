"""The verdict in words: the sentence that leads the report, and what shuffling an unused
modality does (the rule itself lives in :mod:`biasscope.auditing.verdict`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..results import PermutationScore

__all__ = ["verdict_sentence", "shuffle_effect"]


def shuffle_effect(name: str, score: PermutationScore | None, *, margin_flip: float = 0.02,
                   margin_confidence: float = 0.01) -> str:
    """What shuffling a modality does, in words: "shuffling `b` changes 0.0% of the
    predictions and moves the top-class probability by 0.09 on average: the confidence
    moves, not the decisions" ("" for older results). The margins are the verdict's
    (:class:`biasscope.auditing.verdict.Thresholds`)."""
    if score is None or score.flip_rate is None or score.confidence_change is None:
        return ""
    moves, flips = score.confidence_change.mean, score.flip_rate.mean
    said = f"shuffling `{name}` changes {100 * flips:.1f}% of the predictions"
    if flips > margin_flip:
        return f"{said} but costs no accuracy beyond the margin: {100 * score.accuracy_drop.mean:.1f} points"
    said += f" and moves the top-class probability by {moves:.2g} on average"
    return said + (": the confidence moves, not the decisions" if moves > margin_confidence else "")


def _names(names: list[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _names_about(names: list[str], about: Mapping[str, str]) -> str:
    """The names, each ignored one followed by what its probe says ("`text`, which alone
    predicts the label at 85% ...")."""
    if not any(n in about for n in names):
        return _names(names)
    items = [f"`{n}`, which {about[n]}" if n in about else f"`{n}`" for n in names]
    return items[0] if len(items) == 1 else "; ".join(items[:-1]) + "; and " + items[-1]


def verdict_sentence(
    verdicts: dict[str, str], *, note: str = "", disagree: Sequence[str] = (),
    about: Mapping[str, str] | None = None, moves: Mapping[str, str] | None = None,
    undecided: Sequence[str] = (), relied: bool = True,
) -> str:
    """The sentence that leads the report, e.g. "The model ignores `text`; it leans on
    `image`.", then the modalities whose reliance cannot be told (``undecided``), those whose
    sensitivity and reliance shares ``disagree``, then ``note`` (e.g. why reliance is not
    measurable). ``about`` holds, per ignored or unused modality, what the probe says of it
    (:func:`biasscope.measuring.probe.probe_clauses`); ``moves`` per unused modality what shuffling it
    does (:func:`shuffle_effect`). ``relied=False`` (labels, but a model at chance): the
    dominant modality is where the output moves most, not what the model leans on."""
    about, moves = about or {}, moves or {}
    by = {v: [n for n, x in verdicts.items() if x == v] for v in ("ignored", "unused", "weak", "dominant")}
    parts = []
    if by["ignored"]:
        every = len(by["ignored"]) == len(verdicts) > 1
        parts.append(("ignores every modality: " if every else "ignores ") + _names_about(by["ignored"], about))
    if by["unused"]:
        effects = [moves[n] for n in by["unused"] if moves.get(n)]
        parts.append(f"does not rely on {_names(by['unused'])} for its predictions"
                     + (f" ({'; '.join(effects)})" if effects else ", though noise there moves the output"))
    if parts:
        sentence = "The model " + "; it ".join(parts)
        if by["weak"]:
            sentence += f"; it barely uses {_names(by['weak'])}"
    elif by["weak"]:
        sentence = f"No modality is ignored, but the model barely uses {_names(by['weak'])}"
    elif len(verdicts) == 1:
        sentence = f"The model uses {_names(list(verdicts))}"
    else:
        sentence = f"The model uses all {len(verdicts)} modalities"
    if by["dominant"]:
        lean = "it leans on" if relied else "its output moves most with"
        sentence += f"; {lean} {_names(by['dominant'])}"
    sentence += "."
    sentence += "".join(f" `{n}` {about[n]}." for n in by["unused"] if n in about)
    if undecided:
        sentence += (f" Whether it relies on {_names(list(undecided))} cannot be told from these "
                     "shuffles (see `reliance_undecided`).")
    if disagree:
        sentence += (f" Sensitivity and reliance disagree in size on {_names(list(disagree))}: "
                     "read both before acting.")
    return f"{sentence} {note}" if note else sentence
