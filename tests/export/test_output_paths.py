"""``-o/--out``: a folder or the artifact file itself (suffix -> format), and the CLI help's
workflow names only files the commands before it wrote."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from wherevit.app.cli import main
from wherevit.base.errors import InvalidRequest
from wherevit.base.sidecar import read_sidecar
from wherevit.export.api import output_format, resolve_output


@pytest.mark.parametrize("out,fmt,want", [
    ("art/qs", None, (Path("art/qs"), "onnx", None)),
    ("art/qs", "pt2", (Path("art/qs"), "pt2", None)),
    ("art/v1.2", "engine", (Path("art/v1.2"), "engine", None)),  # an unknown suffix is a folder name
    ("art/qs.onnx", None, (Path("art"), "onnx", Path("art/qs.onnx"))),
    ("m.engine", None, (Path("."), "engine", Path("m.engine"))),
    ("art/m.plan", "engine", (Path("art"), "engine", Path("art/m.plan"))),
    ("art/qs.pt2", None, (Path("art"), "pt2", Path("art/qs.pt2"))),
])
def test_out_is_a_folder_or_the_artifact_file(out, fmt, want):
    assert resolve_output(out, fmt) == want


def test_out_file_of_another_format_is_refused():
    with pytest.raises(InvalidRequest, match="is a file name for the onnx format, but the format is engine: give a file ending in .engine/.plan"):
        resolve_output("m.onnx", "engine")
    assert output_format("x/model.PT2") == "pt2" and output_format("x/model") is None


def test_cli_out_file_writes_that_file(trained_run, tmp_path):
    res = CliRunner().invoke(main, ["export", str(trained_run), "-o", str(tmp_path / "qs.onnx"), "--batch", "1:2:4"])
    assert res.exit_code == 0, res.output
    art = tmp_path / "qs.onnx"
    assert art.is_file() and read_sidecar(art).kind == "onnx"  # a file, not a folder named qs.onnx
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qs.onnx", "qs.onnx.json"]


def test_cli_help_workflow_names_files_that_exist():
    """Walk the help's example commands: every path a command reads was written by an earlier one."""
    doc = main.help
    lines = [ln.split("#")[0].strip() for ln in doc.splitlines() if ln.strip().startswith("wherevit ")]
    assert len(lines) >= 5
    written: set[str] = set()
    for line in lines:
        argv = shlex.split(line)[1:]
        cmd, opts = argv[0], dict(zip(argv[1::1], argv[2::1]))
        out = opts.get("--out") or opts.get("-o")
        if cmd == "train":
            written.add(out)
        elif cmd == "eval":
            assert argv[2] in written, line
        elif cmd == "export":
            assert argv[1] in written, line
            folder, fmt, file = resolve_output(out, opts.get("--format"))
            assert file is not None, f"{line}: name the artifact file so later commands can use it"
            written.add(str(file))
            if fmt == "engine":
                written.add(str(file.with_suffix(".onnx")))
        elif cmd in ("bench", "serve"):
            assert argv[1] in written, f"{line}: {argv[1]} is not written by the commands before it"
