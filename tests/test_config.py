"""biasscope.toml: parsing, paths relative to the file, clear errors."""

from __future__ import annotations

import pytest

from biasscope import BiasscopeError, ConfigError, Modality
from biasscope.config import find_config, load_config


def _write(tmp_path, text):
    path = tmp_path / "biasscope.toml"
    path.write_text(text)
    return path


def test_full_file(tmp_path):
    cfg = load_config(_write(tmp_path, """
model = "model.pt"
factory = "models.py:build"
data = "pkg.data:val"
batch_size = 32

[modalities]
image = "input:0"
text = "layer:enc.text#0"

[audit]
samples = 8
shapley = false

[thresholds]
weak = 0.4

[fix]
lambda = "auto"
lr = 1e-4
"""))
    assert cfg.get("model") == str(tmp_path / "model.pt")
    assert cfg.get("factory") == f"{tmp_path / 'models.py'}:build"
    assert cfg.get("data") == "pkg.data:val"  # a module path stays as it is
    assert cfg.modalities == [Modality("image", input=0), Modality("text", layer="enc.text", element=0)]
    assert cfg.audit == {"samples": 8, "shapley": False}
    assert cfg.thresholds.weak == 0.4 and cfg.thresholds.ignored == 0.1
    assert cfg.fix["lr"] == 1e-4


@pytest.mark.parametrize(
    "text, needle",
    [
        ('modle = "x.pt"', "unknown key(s) modle"),
        ('[audit]\nsamples = "8"', "samples must be a int"),
        ('[audit]\nshapley = "no"', "shapley must be a bool"),
        ('[audit]\nsamples = true', "samples must be a int"),
        ('[thresholds]\nignored = 0.9', "ignored <= weak"),
        ('[modalities]\nimage = 3', "image must be a string"),
        ('[modalities]\nimage = "pixels:0"', "NAME=input"),
        ("model = ", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path, text, needle):
    with pytest.raises(BiasscopeError) as info:
        load_config(_write(tmp_path, text))
    assert needle in str(info.value)


def test_find_config(tmp_path):
    assert find_config(cwd=tmp_path) is None
    path = _write(tmp_path, "")
    assert find_config(cwd=tmp_path) == path
    with pytest.raises(ConfigError, match="No config file"):
        find_config(tmp_path / "other.toml")


def test_schema_has_every_option():
    """The [audit] and [fix] tables accept every field of AuditOptions / FixOptions, by
    construction, with the field's type."""
    from dataclasses import fields

    from biasscope.config import config_key, table_schema
    from biasscope.runtime.options import AuditOptions, FixOptions

    for table, cls in (("audit", AuditOptions), ("fix", FixOptions)):
        schema = table_schema(table)
        for f in fields(cls):
            assert config_key(f.name) in schema, (table, f.name)
    assert table_schema("fix")["lambda"] == (int, float, str)
    assert table_schema("audit")["samples"] == (int,)


def test_resolve_options_precedence(tmp_path):
    """flags > [audit] table > top level > AuditOptions defaults."""
    from biasscope.config import resolve_options
    from biasscope.runtime.options import AuditOptions

    cfg = load_config(_write(tmp_path, 'limit = 50\nlabel_key = "none"\n[audit]\nsamples = 8\nseed = 3\n'))
    opts = resolve_options("audit", {"seed": 7, "scale": None}, cfg)
    assert (opts.samples, opts.seed, opts.limit, opts.label_key) == (8, 7, 50, None)
    assert opts.scale == AuditOptions().scale
    fix = resolve_options("fix", {}, load_config(_write(tmp_path, '[fix]\nsteps = 5\nlambda = 0.5\n')))
    assert (fix.max_steps, fix.lambda_) == (5, 0.5)


def test_resolve_options_errors_name_their_origin(tmp_path):
    from biasscope.config import resolve_options

    cfg = load_config(_write(tmp_path, "[audit]\nsamples = 1\n"))
    with pytest.raises(ConfigError, match=r"\[audit\] samples: samples must be an integer in \[2,") as info:
        resolve_options("audit", {}, cfg)
    assert info.value.parameter is None  # from the file: no flag to name
    with pytest.raises(ConfigError) as info:
        resolve_options("audit", {"samples": 1}, cfg)
    assert info.value.parameter == "samples"
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(_write(tmp_path, "[fix]\nbogus = 1\n"))
