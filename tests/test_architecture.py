"""The layers hold: import-linter checks the contracts in pyproject.toml on the real import graph.

The package maps `wherevit.<layer>` onto top-level folders (pyproject's package-dir), which the
import graph builder cannot follow from an editable install; the test assembles the same tree from
symbolic links in a temporary folder and runs `lint-imports` there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _package_tree(tmp: Path) -> Path:
    """tmp/wherevit/<sub> -> the repository folders that pyproject maps them to."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = cfg["tool"]["setuptools"]["package-dir"]
    pkg = tmp / "wherevit"
    pkg.mkdir(parents=True)
    shutil.copy(ROOT / mapping["wherevit"] / "__init__.py", pkg / "__init__.py")
    for name, folder in mapping.items():
        parts = name.split(".")
        if len(parts) == 2:  # direct subpackages; deeper ones live inside them
            (pkg / parts[1]).symlink_to(ROOT / folder, target_is_directory=True)
    return tmp


def _lint(tmp: Path, config: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install 'wherevit[dev]')")
    env = {"PYTHONPATH": str(tmp), "PATH": "/usr/bin:/bin"}
    # cwd=tmp: the repository's own wherevit/ folder must not shadow the assembled tree
    return subprocess.run([str(exe), "--no-cache", "--config", str(config)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)


def test_layer_contracts_hold(tmp_path):
    res = _lint(_package_tree(tmp_path), ROOT / "pyproject.toml")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout and "No import circles between siblings KEPT" in res.stdout


def test_a_layer_violation_is_caught(tmp_path):
    """The check can fail: a base module that imports the runtime breaks the layers contract."""
    tree = _package_tree(tmp_path / "pkg")
    base = tree / "wherevit" / "base"
    base.unlink()
    shutil.copytree(ROOT / "base", base)
    (base / "bad.py").write_text("from wherevit.runtime import model  # noqa\n")
    res = _lint(tree, ROOT / "pyproject.toml")
    assert res.returncode != 0
    assert "BROKEN" in res.stdout and "wherevit.base.bad" in res.stdout


def test_an_import_circle_is_caught(tmp_path):
    """The check can fail: a format that imports the API that runs it (the circle 0.1 had) breaks acyclic_siblings."""
    tree = _package_tree(tmp_path / "pkg")
    export = tree / "wherevit" / "export"
    export.unlink()
    shutil.copytree(ROOT / "export", export)
    (export / "formats" / "bad.py").write_text("from wherevit.export import api  # noqa\n")
    res = _lint(tree, ROOT / "pyproject.toml")
    assert res.returncode != 0
    assert "No import circles between siblings BROKEN" in res.stdout and ".formats -> .api" in res.stdout
