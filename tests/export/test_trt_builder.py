"""The builder's flavour logic (pure) and its execution against a recording stand-in for 10.x/11.x.

The full ``tensorrt`` package cannot be installed on CI, so its code path is exercised here with a
stand-in module that records the calls our builder makes; TensorRT-RTX is exercised for real in
test_export.py.
"""

import sys
import types

import onnx
import pytest
from onnx import TensorProto, helper

from wherevit.export.trt_builder import (
    OnnxParseError,
    TrtFlavour,
    build_engine,
    detect_flavour,
    parse_compute_capabilities,
    plan_build,
)

T10, T11, RTX = TrtFlavour("tensorrt", "10.13.0.35"), TrtFlavour("tensorrt", "11.4.0.106"), TrtFlavour("tensorrt_rtx", "1.7.1.116")


@pytest.mark.parametrize("prec,flags,onnx_prec", [("fp32", (), "fp32"), ("fp16", ("FP16",), "fp32"), ("bf16", ("BF16",), "fp32")])
def test_trt10_uses_precision_flags_on_a_float32_onnx(prec, flags, onnx_prec):
    plan = plan_build(T10, prec)
    assert plan.builder_flags == flags and plan.onnx_precision == onnx_prec and plan.network_flags == ()


def test_trt10_can_build_strongly_typed_on_request():
    plan = plan_build(T10, "fp16", strongly_typed=True)
    assert plan.network_flags == ("STRONGLY_TYPED",) and plan.builder_flags == () and plan.onnx_precision == "fp16"


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
def test_trt11_is_strongly_typed_with_a_typed_onnx(prec):
    plan = plan_build(T11, prec)
    assert plan.network_flags == ("STRONGLY_TYPED",) and plan.builder_flags == () and plan.onnx_precision == prec
    with pytest.raises(ValueError, match="strongly typed only"):
        plan_build(T11, prec, strongly_typed=False)


def test_rtx_targets_compute_capabilities():
    assert plan_build(RTX, "fp16").compute_capabilities == ("SM80", "SM86", "SM89", "SM120")
    assert plan_build(RTX, "fp32", ("SM86",)).compute_capabilities == ("SM86",)
    with pytest.raises(ValueError, match="9.0"):
        plan_build(RTX, "fp16", ("SM90",))
    with pytest.raises(ValueError, match="TensorRT-RTX option"):
        plan_build(T10, "fp16", ("SM86",))
    with pytest.raises(ValueError, match="precision"):
        plan_build(T10, "fp8")


def test_int8_is_explicit_quantisation_from_the_qdq_onnx():
    for flavour in (RTX, T11):
        plan = plan_build(flavour, "int8")
        assert plan.onnx_precision == "int8" and plan.network_flags == ("STRONGLY_TYPED",) and plan.builder_flags == ()
        assert any("Q/DQ" in n for n in plan.notes)
    weak = plan_build(T10, "int8")  # TensorRT 10 weakly typed honours Q/DQ only with the INT8 flag
    assert weak.builder_flags == ("INT8",) and weak.onnx_precision == "int8"


def test_parse_compute_capabilities():
    assert parse_compute_capabilities("8.6, sm89,120") == ("SM86", "SM89", "SM120")
    assert parse_compute_capabilities(None) == ()
    with pytest.raises(ValueError, match="like 8.6"):
        parse_compute_capabilities("ampere")


class _Recorder:
    """A minimal stand-in for the ``tensorrt`` module: records what the builder asks for."""

    def __init__(self, version, has_strongly_typed=True, parse_ok=True):
        self.calls = []
        rec = self
        self.__version__ = version

        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO = range(4)

        self.ILogger = type("ILogger", (), {"Severity": Severity, "__init__": lambda self: None})
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(**({"STRONGLY_TYPED": 5} if has_strongly_typed else {}))
        self.BuilderFlag = types.SimpleNamespace(FP16=0, BF16=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="ws")

        class Err:
            def node_name(self):
                return "/blocks.0/Foo"

            def node_operator(self):
                return "FancyOp"

            def desc(self):
                return "No importer registered for op: FancyOp"

        class Parser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                rec.calls.append(("parse", path))
                return parse_ok

            def get_error(self, i):
                return Err()

        self.OnnxParser = Parser

        class Config:
            def set_memory_pool_limit(self, pool, size):
                rec.calls.append(("workspace", size))

            def set_flag(self, flag):
                rec.calls.append(("flag", flag))

            def add_optimization_profile(self, p):
                rec.calls.append(("profile", dict(p.shapes)))

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.calls.append(("network", flags))
                return object()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"PLAN"

        self.Builder = Builder


def _install(monkeypatch, rec):
    mod = types.ModuleType("tensorrt")
    mod.__dict__.update({k: v for k, v in vars(rec).items() if k != "calls"})
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    return mod


def _tiny_onnx(path, op="Relu", domain=""):
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 2, 2])])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_trt10_build_sets_fp16_flag_and_plain_network(monkeypatch, tmp_path):
    rec = _Recorder("10.13.0.35")
    _install(monkeypatch, rec)
    facts = build_engine(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", plan_build(T10, "fp16"), "images",
                         (3, 32, 32), (1, 4, 8), workspace_mb=64)
    assert ("network", 0) in rec.calls and ("flag", 0) in rec.calls
    assert ("profile", {"images": ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))}) in rec.calls
    assert ("workspace", 64 << 20) in rec.calls
    assert (tmp_path / "m.engine").read_bytes() == b"PLAN"
    assert facts["builder_flags"] == ["FP16"] and facts["onnx_precision"] == "fp32"


def test_trt11_build_is_strongly_typed_without_flags(monkeypatch, tmp_path):
    rec = _Recorder("11.4.0.106")
    _install(monkeypatch, rec)
    build_engine(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", plan_build(T11, "fp16"), "images", (3, 32, 32), (1, 1, 2))
    assert ("network", 1 << 5) in rec.calls
    assert not any(c[0] == "flag" for c in rec.calls)


def test_parser_errors_name_the_node_and_leave_no_engine(monkeypatch, tmp_path):
    _install(monkeypatch, _Recorder("10.13.0.35", parse_ok=False))
    with pytest.raises(OnnxParseError, match=r"node /blocks.0/Foo \(FancyOp\): No importer registered"):
        build_engine(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", plan_build(T10, "fp32"), "images", (3, 32, 32), (1, 1, 1))
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx is not installed")
def test_real_rtx_parser_rejects_an_unknown_op(tmp_path):
    onnx_path = _tiny_onnx(tmp_path / "bad.onnx", op="NoSuchOp", domain="com.example")
    plan = plan_build(detect_flavour("tensorrt_rtx"), "fp32", ("SM86",))
    with pytest.raises(OnnxParseError, match="NoSuchOp"):
        build_engine(onnx_path, tmp_path / "bad.engine", plan, "x", (3, 2, 2), (1, 1, 1))
    assert not (tmp_path / "bad.engine").exists()


def test_missing_library_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("tensorrt") else real(name, *a))
    with pytest.raises(Exception, match="no TensorRT library found"):
        detect_flavour("auto")
