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
        elif cmd in ("eval", "train-head"):  # eval KIND RUN, train-head TASK RUN
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


# -- what a format supports is declared; -o FILE is exactly FILE at every precision ----------------------

needs_rtx = pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx is not installed")


@pytest.mark.parametrize("fmt,precision", [("pt2", "int8"), ("onnx", "int4")])
def test_an_impossible_combination_is_one_line_before_any_work(fmt, precision, tmp_path):
    res = CliRunner().invoke(main, ["export", "no-such-checkpoint", "--format", fmt, "--precision", precision, "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 if precision == "int4" else res.exit_code == 1, res.output
    if precision == "int8":  # the format's own declaration, named; the checkpoint was never opened
        assert res.output.strip().splitlines()[-1] == (
            "Error: InvalidRequest: --format pt2 does not support precision 'int8'; it supports fp32, fp16, bf16 "
            "(INT8 is made from the ONNX graph: formats built on it support int8)")
    else:  # not in the precision table: click lists the table
        assert "'int4' is not one of 'fp32', 'fp16', 'bf16', 'int8'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_out_file_is_the_int8_graph_and_its_float_source_sits_beside(trained_run, tmp_path):
    res = CliRunner().invoke(main, ["export", str(trained_run), "-o", str(tmp_path / "qs.onnx"), "--precision", "int8",
                                    "--calib-count", "8", "--batch", "1:2:4"])
    assert res.exit_code == 0, res.output
    assert _names(tmp_path) == ["qs.onnx", "qs.onnx.json", "qs_fp32.onnx", "qs_fp32.onnx.json"]
    meta = read_sidecar(tmp_path / "qs.onnx")
    assert meta.precision == "int8" and meta.quantization.source_onnx.file == "qs_fp32.onnx"
    assert read_sidecar(tmp_path / "qs_fp32.onnx").precision == "fp32"


def test_triton_takes_the_int8_graph(trained_run, tmp_path):
    """INT8 is a step the triton format consumes (it was a KeyError: 'int8')."""
    repo = tmp_path / "repo"
    res = CliRunner().invoke(main, ["export", str(trained_run), "--format", "triton", "--precision", "int8", "--calib-count", "8",
                                    "--batch", "1:2:4", "-o", str(repo)])
    assert res.exit_code == 0, res.output
    model = repo / "vit_tiny_patch16_224" / "1" / "model.onnx"
    meta = read_sidecar(model)
    assert meta.precision == "int8" and meta.quantization.mode == "static" and meta.parity["passed"] is True
    config = (repo / "vit_tiny_patch16_224" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and 'string_value: "int8"' in config
    assert _names(repo) == ["model_fp32.onnx", "model_fp32.onnx.json", "vit_tiny_patch16_224"]  # the float source; Triton reads directories


@needs_rtx
@pytest.mark.parametrize("precision,out,beside", [
    ("fp16", "m.plan", ["m.onnx", "m.onnx.json", "m.plan", "m.plan.json"]),
    ("int8", "qs.engine", ["qs.engine", "qs.engine.json", "qs.onnx", "qs.onnx.json", "qs_fp32.onnx", "qs_fp32.onnx.json"]),
])
def test_out_file_is_the_engine_at_every_precision(precision, out, beside, trained_run, tmp_path):
    res = CliRunner().invoke(main, ["export", str(trained_run), "-o", str(tmp_path / out), "--precision", precision, "--trt-lib",
                                    "tensorrt_rtx", "--cc", "8.6", "--calib-count", "8", "--batch", "1:2:4"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == beside
    engine = read_sidecar(tmp_path / out)
    assert engine.kind == "engine" and engine.precision == precision
    if precision == "int8":  # built from the Q/DQ graph beside it, and the INT8 ONNX records what TensorRT did
        q = read_sidecar(tmp_path / "qs.onnx").quantization
        assert q.tensorrt_build["built"] is True and q.tensorrt_build["engine"] == "qs.engine"
        assert q.activations.startswith("int8, symmetric") and engine.quantization.source_onnx.file == "qs_fp32.onnx"


@pytest.mark.parametrize("fmt,out,precision,want", [
    # (requested format, -o, precision) -> {product name: path}; the requested product is exactly -o's file
    ("onnx", "a/qs.onnx", "fp16", {"onnx": "a/qs.onnx"}),
    ("onnx", "a/qs.onnx", "int8", {"onnx-source": "a/qs_fp32.onnx", "int8": "a/qs.onnx"}),
    ("engine", "a/m.plan", "fp16", {"onnx": "a/m.onnx", "engine": "a/m.plan"}),
    ("engine", "a/m.plan", "int8", {"onnx-source": "a/m_fp32.onnx", "int8": "a/m.onnx", "engine": "a/m.plan"}),
    ("pt2", "a/qs.pt2", "bf16", {"pt2": "a/qs.pt2"}),
    ("onnx", None, "int8", {"onnx-source": "o/model_fp32.onnx", "int8": "o/model_int8.onnx"}),
    ("engine", None, "fp16", {"onnx": "o/model_fp32.onnx", "engine": "o/model_fp16.engine"}),  # weakly typed TRT 10
])
def test_artifact_names_for_every_format_and_precision(fmt, out, precision, want):
    from wherevit.export.formats.base import ExportContext, file_label
    from wherevit.export.request import ExportRequest

    req = ExportRequest("ckpt", Path("o"), format=fmt, precision=precision, out_file=Path(out) if out else None)
    quant = "onnx" if precision == "int8" else None
    ctx = ExportContext(req, Path(out).parent if out else Path("o"), "model", None, {}, None, None, None, (1, 1, 1), None,
                        quant_source=quant)
    suffix = {"onnx": ".onnx", "engine": ".engine" if out is None else Path(out).suffix, "pt2": ".pt2"}
    got = {}
    for name in want:
        if name == "onnx-source":
            got[name] = ctx.artifact_path("onnx", "fp32", ".onnx")
        elif name == "int8":  # the INT8 step's product stands in for the onnx format's
            got[name] = ctx.artifact_path("onnx", file_label("int8", "static"), ".onnx", final=True)
        else:
            graph = "fp32" if (name == "onnx" and out is None) else precision
            got[name] = ctx.artifact_path(name, graph, suffix[name])
    assert {k: str(v) for k, v in got.items()} == want
