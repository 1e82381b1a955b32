"""The audit's profiles (options.AUDIT_PROFILES): quick / standard / thorough set the options
not given, from Python (``audit(profile=...)``, ``AuditOptions.from_profile``), the command
line (``--profile``) and biasscope.toml (``profile`` in ``[audit]``)."""

from __future__ import annotations

import pytest

import biasscope as bs
from biasscope.config import resolve_options
from biasscope.errors import ConfigError
from biasscope.runtime.options import AUDIT_PROFILES, AuditOptions
from tests.zoo import cases


def test_standard_is_the_defaults_and_the_given_options_win():
    assert AuditOptions.from_profile("standard") == AuditOptions()
    quick = AuditOptions.from_profile("quick", samples=32)
    assert quick.samples == 32 and quick.permutation_repeats == AUDIT_PROFILES["quick"]["permutation_repeats"]
    assert AuditOptions.from_profile("thorough").samples > AuditOptions().samples > AuditOptions.from_profile("quick").samples


def test_the_command_line_and_the_config_take_a_profile():
    assert resolve_options("audit", {"profile": "quick", "seed": 3}) == AuditOptions.from_profile("quick", seed=3)
    assert resolve_options("audit", {"profile": "thorough", "samples": 16}).samples == 16
    with pytest.raises(ConfigError, match="profile must be one of quick, standard, thorough"):
        resolve_options("audit", {"profile": "fast"})


def test_audit_with_a_profile_runs_its_options():
    model, data, mods, _ = next(c for c in cases() if c.name == "balanced").build()
    result = bs.audit(model, data, mods, profile="quick", device="cpu", options=AuditOptions(seed=1))
    settings = result.settings
    assert (settings["samples"], settings["permutation_repeats"], settings["shapley"], settings["seed"]) == (8, 5, False, 1)
    assert result.shapley == [] and all(m.permutation.repeats == 5 for m in result.modalities)
