"""Stage a mutation-testing run of the method code with mutmut (a benchmark, not a CI step).

mutmut copies the package it mutates into ``mutants/`` and imports it from there, so it needs the
package as an importable folder (``wherevit/...``); this repository maps its folders onto the
``wherevit`` namespace through setuptools' ``package-dir``. This script therefore builds a staging
tree: the package laid out as installed, the fast method tests, and a ``pyproject.toml`` holding
the mutmut configuration (scope and test selection). Run mutmut inside it:

    python benchmarks/mutation/stage.py /tmp/wherevit-mutation
    cd /tmp/wherevit-mutation && OMP_NUM_THREADS=1 nice -n 19 <venv>/bin/mutmut run --max-children 2
    <venv>/bin/python <repo>/benchmarks/mutation/report.py /tmp/wherevit-mutation --out <repo>/benchmarks/results/mutation

Scope (``MUTATE``): the loss, plug-in, masking, geometry and token-path code. Inside those files
mutmut mutates function bodies; what is not method code is kept out: config validation and
cross-section checks, error messages (``raise`` statements), the plug-in registry, export and
model-building plumbing (``OUT_OF_SCOPE`` functions get ``# pragma: no mutate block`` in the staged
copy only; the repository's files carry no pragmas). mutmut skips decorated functions, so the
staged copy also drops ``@torch.no_grad()`` decorators (the tests never backpropagate through those
functions, so their results are unchanged) to bring Sinkhorn, the centre updates, the teacher
forward, the EMA and the clipping into scope; ``@property`` functions stay out.
Tests (``TESTS``): the method tests that run in seconds; mutmut runs, per mutant, only those of
them that execute the mutated function.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# package folder -> repository folder (pyproject.toml [tool.setuptools.package-dir])
LAYOUT = {"wherevit": "wherevit", "wherevit/base": "base", "wherevit/app": "app", "wherevit/train": "train",
          "wherevit/export": "export", "wherevit/runtime": "runtime", "wherevit/configs": "configs"}

MUTATE = [
    "wherevit/train/losses.py",
    "wherevit/train/clipping.py",
    "wherevit/train/heads.py",
    "wherevit/train/meta_arch.py",
    "wherevit/train/backbone.py",
    "wherevit/train/data/masking.py",
    "wherevit/train/data/geometry.py",
    "wherevit/train/plugins/base.py",
    "wherevit/train/plugins/roi.py",
    "wherevit/train/plugins/sp.py",
    "wherevit/train/plugins/posfield.py",
    "wherevit/train/plugins/scrl.py",
    "wherevit/train/plugins/gtsa.py",
    "wherevit/train/plugins/equivariance.py",
]

# functions that are not method code: validation, registry, export and description plumbing
OUT_OF_SCOPE = ("validate", "check_run_config", "parse_config", "_check_plugins", "create_plugin", "plain_backbone_state",
                "export_backbone_state", "_bake_check", "describe_backbone", "embed_images", "create_backbone",
                "backbone_features", "timm_kwargs", "attach", "roi_align")

TESTS = [
    "tests/train/test_method_losses.py",
    "tests/train/test_method_geometry.py",
    "tests/train/test_method_plugins.py",
    "tests/train/test_method_views.py",
    "tests/train/test_method_ddp.py",
    "tests/train/test_losses.py",
    "tests/train/test_plugin_losses.py",
    "tests/train/test_plugin_geometry.py",
    "tests/train/test_posfield.py",
    "tests/train/test_sp_targets.py",
    "tests/train/test_host.py",
]

PYPROJECT = """\
[tool.mutmut]
source_paths = ["wherevit"]
only_mutate = {only}
do_not_mutate_patterns = ["^\\\\s*raise ", "log\\\\.(warning|info|debug)\\\\("]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "-p", "no:randomly"]
pytest_add_cli_args_test_selection = {tests}
process_isolation = "fork"
timeout_multiplier = 10.0
timeout_constant = 20.0

[tool.pytest.ini_options]
testpaths = ["tests"]
timeout = 600
markers = ["slow: end-to-end", "gpu: needs a GPU", "trt: needs TensorRT"]
filterwarnings = ["ignore::DeprecationWarning:timm.*"]
"""


def _fence(source: str) -> str:
    """``# pragma: no mutate block`` on the header of every out-of-scope function, and no
    ``@torch.no_grad()`` decorators (staged copy only)."""
    names = "|".join(map(re.escape, OUT_OF_SCOPE))
    out = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == "@torch.no_grad()":  # mutmut skips decorated functions; grad mode is irrelevant to the tests
            i += 1
            continue
        m = re.match(rf"^(\s*)(async\s+)?def ({names})\(", line)
        if not m:
            out.append(line)
            i += 1
            continue
        # the header may span lines: find the line ending the signature with ':'
        j = i
        while not re.search(r"\)\s*(->\s*[^:]+)?:\s*(#.*)?$", lines[j]):
            j += 1
        out.extend(lines[i:j])
        out.append(lines[j].split("#", 1)[0].rstrip() + "  # pragma: no mutate block")
        i = j + 1
    return "\n".join(out) + "\n"


def stage(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    for pkg, folder in LAYOUT.items():
        src = REPO / folder
        for path in src.rglob("*"):
            if "__pycache__" in path.parts or path.is_dir():
                continue
            rel = path.relative_to(src)
            if pkg == "wherevit" and rel.parts and rel.parts[0] != "__init__.py":
                continue  # the top folder holds only the namespace's __init__
            target = dest / pkg / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if f"{pkg}/{rel}" in MUTATE:
                target.write_text(_fence(path.read_text()))
            else:
                shutil.copy2(path, target)
    (dest / "tests" / "train").mkdir(parents=True)
    for name in ("tests/conftest.py", "tests/helpers.py", *TESTS):
        shutil.copy2(REPO / name, dest / name)
    (dest / "pyproject.toml").write_text(PYPROJECT.format(only=MUTATE, tests=[str(t) for t in TESTS] + ["-m", "not slow"])
                                         .replace("'", '"'))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path, help="staging folder (recreated)")
    args = ap.parse_args(argv)
    stage(args.dest)
    print(f"staged {len(MUTATE)} files to mutate and {len(TESTS)} test files in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
