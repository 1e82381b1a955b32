"""Start-up: `biasscope --help` / `--version` import neither torch nor scipy; the package
loads its public names lazily; `python -m biasscope` is the command; cli/ imports no
private module of the library."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_imports_no_torch_nor_scipy():
    printed = _run(
        "import sys, biasscope.cli.main; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'scipy', 'numpy')))"
    )
    assert printed.strip() == "[]"


def test_version_and_help_without_torch():
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom biasscope.cli.main import app\n"
        "r = CliRunner()\nv = r.invoke(app, ['--version'])\nh = r.invoke(app, ['audit', '--help'])\n"
        "assert v.exit_code == 0 and h.exit_code == 0, (v.output, h.output)\n"
        "print(v.output.strip()); print('torch' in sys.modules)\n"
    )
    version, torch_loaded = _run(code).strip().splitlines()[-2:]
    assert version.startswith("biasscope ") and "torch" in version
    assert torch_loaded == "False"


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "biasscope", "--version"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("biasscope ")


def test_help_shows_defaults_from_the_options():
    from typer.testing import CliRunner

    from biasscope.cli.main import app
    from biasscope.runtime.options import AuditOptions

    res = CliRunner().invoke(app, ["audit", "--help"], env={"COLUMNS": "200"})
    text = " ".join(res.output.split())
    assert f"[default: {AuditOptions().samples}]" in text
    assert f"[default: {AuditOptions().permutation_repeats}]" in text


def test_public_names_sorted_complete_and_lazy():
    import biasscope

    assert biasscope.__all__ == sorted(biasscope.__all__)
    for name in biasscope.__all__:
        value = getattr(biasscope, name)
        assert not isinstance(value, types.ModuleType), name  # no module re-exported
    for name in ("AuditOptions", "FixOptions", "Diagnostic", "Calibration", "AuditReport"):
        assert name in biasscope.__all__
    import biasscope.auditing.audit  # noqa: F401  (binds the submodule on the package)

    assert callable(biasscope.audit) and not isinstance(biasscope.audit, types.ModuleType)
    assert not isinstance(biasscope.fix, types.ModuleType)
    with pytest.raises(AttributeError):
        biasscope.no_such_name  # noqa: B018


def test_import_biasscope_is_torch_free():
    assert _run("import sys, biasscope; print('torch' in sys.modules)").strip() == "False"
    assert _run("import sys; from biasscope import audit; print('torch' in sys.modules)").strip() == "True"


def test_cli_imports_no_private_module():
    for path in sorted((ROOT / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "biasscope":
                    assert not any(p.startswith("_") and p != "__version__" for p in parts[1:]), (path.name, name)
