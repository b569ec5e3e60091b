"""The bench's machine section: measured GEMM peaks per dtype, fractions of peak, CPU bf16 rows that skip with a reason."""

import numpy as np
import pytest

from wherevit.app.bench import BenchRow, parity_fields
from wherevit.app.machine import (
    annotate_fractions,
    bf16_cpu_reason,
    format_machine,
    measure_peaks,
    ort_gemm_peak,
    peak_dtype,
)
from wherevit.base.cpu import CpuIsa, cpu_isa


def test_ort_gemm_peaks_are_measured_with_the_rows_backend():
    for dtype, op in (("fp32", "MatMul"), ("int8", "MatMulInteger")):
        p = ort_gemm_peak(dtype, n=256, repeats=2)
        assert p.kernel.startswith("onnxruntime") and p.kernel.endswith(op)
        assert 0.1 < p.gflops < 1e5 and p.shape == [256, 256, 256] and p.threads >= 1
    with pytest.raises(ValueError, match="fp32 or int8"):
        ort_gemm_peak("fp8")


def test_machine_section_names_isa_and_peaks():
    m = measure_peaks(n=256, repeats=1)
    assert m["isa"]["summary"] and set(m["peaks"]) == {"fp32", "int8", "bf16"}
    bf16 = m["peaks"]["bf16"]
    if cpu_isa().bf16:
        assert bf16["gflops"] > 0 and bf16["kernel"].startswith("torch")
    else:
        assert bf16["gflops"] is None and "no BF16 instructions" in bf16["skipped"]
    line = format_machine({**m, "cores_available": 2})
    assert "GEMM peaks" in line and m["isa"]["summary"] in line


def test_bf16_rows_follow_the_isa():
    assert bf16_cpu_reason(CpuIsa(model="x", arch="x86_64", avx512f=True, avx512_bf16=True)) is None
    assert "no BF16" in bf16_cpu_reason(CpuIsa(model="x", arch="x86_64", avx2=True))


def test_fraction_of_peak_per_dtype():
    rows = [BenchRow("ort-cpu", "fp32", 2, "ok", p50_ms=10.0), BenchRow("ort-cpu", "int8-dynamic", 1, "ok", p50_ms=10.0),
            BenchRow("ort-cuda", "fp16", 1, "ok", p50_ms=1.0), BenchRow("ort-cpu", "bf16", 1, "skipped")]
    peaks = {"fp32": {"gflops": 100.0}, "int8": {"gflops": 200.0}, "bf16": {"gflops": None}}
    annotate_fractions(rows, 0.5, peaks, cpu_rows=lambda r: r.backend != "ort-cuda")
    assert rows[0].fraction_of_peak == pytest.approx(1.0 / 0.01 / 100)  # 2 x 0.5 GFLOP in 10 ms at 100 GFLOP/s
    assert rows[1].fraction_of_peak == pytest.approx(0.5 / 0.01 / 200)
    assert rows[2].fraction_of_peak is None and rows[3].fraction_of_peak is None
    assert peak_dtype("int8") == peak_dtype("int8-dynamic") == "int8" and peak_dtype("fp16") == "fp32"


def test_parity_by_cosine_for_quantised_rows():
    rng = np.random.default_rng(0)
    ref = {"cls": rng.standard_normal((4, 64)).astype(np.float32)}
    close = {"cls": ref["cls"] + 0.05 * rng.standard_normal((4, 64)).astype(np.float32)}
    p = parity_fields(ref, close, 1e-4, min_cosine=0.99)
    assert p["parity_ok"] is True and 0.99 < p["cos_min"] <= 1 and p["rel_l2"] > 1e-4
    assert parity_fields(ref, close, 1e-4)["parity_ok"] is False  # the same output fails the fp32 criterion
    bad = {"cls": ref["cls"].copy()}
    bad["cls"][2] = -bad["cls"][2]  # one flipped sample: the mean hides it, the minimum does not
    p = parity_fields(ref, bad, 1e-4, min_cosine=0.99)
    assert p["parity_ok"] is False and p["cos_min"] < -0.99
