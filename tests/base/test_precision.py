"""The precision table: one answer per precision for every module that used to keep its own list."""

from __future__ import annotations

import pytest

from wherevit.base.errors import InvalidRequest
from wherevit.base.precision import (
    PRECISIONS,
    check_supported,
    get_precision,
    parse_precision_label,
    precision_label,
    precision_names,
)


def test_the_table_pins_the_bounds_each_module_used():
    # the bounds export parity, bench and compare.py used before the table (relative L2; cosine for int8 and bf16 rows)
    assert {n: p.rtol for n, p in PRECISIONS.items()} == {"fp32": 1e-4, "fp16": 1e-2, "bf16": 3e-2, "int8": None}
    assert {n: p.min_cosine for n, p in PRECISIONS.items()} == {"fp32": None, "fp16": None, "bf16": 0.99, "int8": 0.99}
    assert {n: p.trt_flag for n, p in PRECISIONS.items()} == {"fp32": None, "fp16": "FP16", "bf16": "BF16", "int8": "INT8"}
    assert {n: p.cpu_peak for n, p in PRECISIONS.items()} == {"fp32": "fp32", "fp16": "fp32", "bf16": "bf16", "int8": "int8"}
    assert precision_names(quantized=False) == ("fp32", "fp16", "bf16") and precision_names(quantized=True) == ("int8",)
    assert get_precision("int8").source == "fp32" and get_precision("bf16").dtype == "bfloat16"


def test_bench_labels_tell_dynamic_int8_apart():
    assert precision_label("int8", "dynamic") == "int8-dynamic" and precision_label("int8", "static") == "int8"
    assert precision_label("fp16", None) == "fp16"
    assert parse_precision_label("int8-dynamic") == ("int8", "dynamic") and parse_precision_label("int8") == ("int8", "static")
    assert parse_precision_label("bf16") == ("bf16", None)
    with pytest.raises(InvalidRequest, match="unknown precision 'fp16-dynamic'; precisions: fp32, fp16, bf16, int8, int8-dynamic"):
        parse_precision_label("fp16-dynamic")


def test_unsupported_is_one_line_naming_what_exists():
    with pytest.raises(InvalidRequest, match=r"^--format pt2 does not support precision 'int8'; it supports fp32, fp16$"):
        check_supported("--format pt2", ("fp32", "fp16"), "int8")
    with pytest.raises(InvalidRequest, match="unknown precision 'fp8'; precisions: fp32, fp16, bf16, int8"):
        check_supported("x", ("fp32",), "fp8")
