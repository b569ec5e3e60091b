"""`wherevit export`'s per-format options are generated from each format's Options dataclass (and QuantOptions):
every field is on the command line with its declared name and default, and what the CLI builds is what the
dataclass says; a format a package registers gets its options the same way."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from wherevit.app.cli import main
from wherevit.app.options_cli import export_option_groups
from wherevit.base.options import option
from wherevit.export.formats import ExportFormat, register_format
from wherevit.export.formats import base as formats_base
from wherevit.export.formats.engine import EngineOptions
from wherevit.export.formats.triton import TritonOptions
from wherevit.export.quantize import QuantOptions


def _help() -> str:
    res = CliRunner().invoke(main, ["export", "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def test_every_options_field_is_an_export_option_with_its_default():
    text = _help()
    groups = export_option_groups()
    assert {k for g in groups for k in g.keys} >= {"onnx", "engine", "pt2", "triton", "triton-engine", "int8"}
    for g in groups:
        for f in dataclasses.fields(g.cls):
            cli = f.metadata.get("cli")
            if cli is False:
                continue
            decl = cli or f"--{g.prefix}-{f.name.replace('_', '-')}"
            assert decl.replace("/", " / ") in text or decl in text, f"{g.cls.__name__}.{f.name}: {decl} missing from export --help"
            if f.default not in (None, (), False, True) and f.metadata.get("parse") is None:
                entry = text.split("\n  " + decl.split("/")[0], 1)[1].split("\n  -")[0]  # its line(s) in the option list
                assert f"[default: {f.default}]" in entry, decl


def test_the_cli_builds_each_formats_options(trained_run, tmp_path, monkeypatch):
    import wherevit.export.api as api

    seen = {}
    monkeypatch.setattr(api, "export_artifacts", lambda req: seen.setdefault("req", req) and (_ for _ in ()).throw(SystemExit(0)))
    CliRunner().invoke(main, ["export", str(trained_run), "--format", "triton-engine", "-o", str(tmp_path), "--trt-lib", "tensorrt_rtx",
                              "--cc", "8.6,sm89", "--workspace-mb", "64", "--triton-name", "m", "--triton-instances", "2",
                              "--quant", "dynamic", "--reduce-range", "--opset", "19"])
    opts = seen["req"].format_options
    assert opts["engine"] == EngineOptions("tensorrt_rtx", ("SM86", "SM89"), None, 64)
    assert opts["triton"] is opts["triton-engine"] and opts["triton"] == TritonOptions(name="m", instance_count=2)
    assert opts["int8"] == QuantOptions(mode="dynamic", reduce_range=True) and opts["onnx"].opset == 19
    assert opts["pt2"].device == "cpu"


def test_a_bad_option_value_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["export", "x", "--cc", "eight", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "compute capability 'eight' is not like 8.6 or sm86" in res.output


@dataclass(frozen=True)
class ToyOptions:
    level: int = option(3, help="How hard the toy format tries.")
    tag: str = option("t", cli="--toy-label", choices=("t", "u"))
    secret: int = option(0, cli=False)


class ToyFormat(ExportFormat):
    name = "toyopt"
    suffixes = (".toyopt",)
    Options = ToyOptions

    def build(self, ctx):  # never built here
        raise AssertionError


@pytest.fixture
def toy_format():
    snap = formats_base.FORMATS.snapshot()
    register_format(ToyFormat)
    yield ToyFormat
    formats_base.FORMATS.restore(snap)


def test_a_registered_formats_options_reach_the_command_line(toy_format, tmp_path, monkeypatch):
    text = _help()
    assert "--toyopt-level INTEGER" in text and "How hard the toy format tries." in text and "--toy-label [t|u]" in text
    assert "secret" not in text
    import wherevit.export.api as api

    seen = {}
    monkeypatch.setattr(api, "export_artifacts", lambda req: seen.setdefault("req", req) and (_ for _ in ()).throw(SystemExit(0)))
    CliRunner().invoke(main, ["export", "x", "--toyopt-level", "7", "--toy-label", "u", "-o", str(tmp_path)])
    assert seen["req"].format_options["toyopt"] == ToyOptions(level=7, tag="u")
