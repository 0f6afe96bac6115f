"""The contracts that keep the code base in shape, checked on every run of the suite: the layers
of the data flow and no import cycles (import-linter), the report and the folder contract free of
torch, and ruff's lint with its complexity and size rules."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_the_import_contracts_hold():
    done = _run(str(BIN / "lint-imports"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_a_back_edge_breaks_the_layers_contract(tmp_path: Path):
    # A scratch copy where the folder contract (the bottom layer) imports the report (the top).
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    folders = tmp_path / "src" / "cnnvit" / "folders.py"
    folders.write_text(folders.read_text() + "\nimport cnnvit.report  # a back-edge\n")
    env = {"PATH": str(BIN), "PYTHONPATH": str(tmp_path / "src"), "HOME": str(tmp_path)}
    done = _run(str(BIN / "lint-imports"), "--no-cache", cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "The data flow: each layer imports only the layers below it BROKEN" in done.stdout
    assert "cnnvit.folders -> cnnvit.report" in done.stdout


@pytest.mark.parametrize(
    "module", ["cnnvit.report", "cnnvit.folders", "cnnvit.cli", "cnnvit.stats", "cnnvit.metrics"]
)
def test_modules_that_must_not_import_torch(module: str):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    done = _run(sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_ruff_with_the_complexity_and_size_rules():
    done = _run(str(BIN / "ruff"), "check", "--no-cache", "src", "tests", "benchmarks")
    assert done.returncode == 0, done.stdout + done.stderr
