"""The precision table: every numeric precision wherevit exports, runs and benchmarks, decided once (torch-free).

Each ``Precision`` says what it is (a float dtype, or a quantisation made from a float graph), how
its outputs are judged against PyTorch fp32 (a relative-L2 bound, a per-sample cosine bound, or
both), and what it is called by the libraries that need a name for it. Every other module asks
this table (``get_precision``) instead of keeping its own list of strings; export formats and
runtime backends declare which of these names they support (``ExportFormat.precisions``,
``Backend.precisions``), so an impossible combination is refused up front, naming what exists.

Bench rows also tell static from dynamic INT8: the row label ``int8-dynamic`` is precision
``int8`` with quantisation mode ``dynamic`` (``precision_label`` / ``parse_precision_label``).
"""

from __future__ import annotations

from dataclasses import dataclass

from wherevit.base.errors import InvalidRequest

__all__ = ["Precision", "PRECISIONS", "get_precision", "precision_names", "precision_label", "parse_precision_label",
           "check_supported", "DEFAULT_MIN_COSINE", "REFERENCE_PRECISION"]

DEFAULT_MIN_COSINE = 0.99  # per-sample cosine bound for quantised graphs and mixed-precision (autocast) rows
REFERENCE_PRECISION = "fp32"  # every parity check (export, bench) compares against PyTorch at this precision


@dataclass(frozen=True)
class Precision:
    """One precision and every fact about it that more than one module needs."""

    name: str  # the CLI / sidecar name: "fp32", "fp16", "bf16", "int8"
    title: str  # for help texts
    dtype: str | None  # the float dtype of weights and matmuls (torch/NumPy name); None for a quantisation
    source: str  # the float precision of the graph it is made from: itself for floats, "fp32" for int8
    rtol: float | None  # relative-L2 bound of an exported graph against PyTorch fp32 (None: not judged by it)
    min_cosine: float | None  # per-sample cosine bound; where set, bench judges this precision's rows by it
    cpu_peak: str  # the CPU GEMM peak a row of this precision is measured against (app/machine.py)
    trt_flag: str | None  # TensorRT BuilderFlag when a weakly typed TensorRT 10 network is built in it
    quant_modes: tuple[str, ...] = ()  # quantisations: the modes a bench row label may name (int8-dynamic)

    @property
    def quantized(self) -> bool:
        """Made by quantising a float graph (not a float dtype of its own)."""
        return self.dtype is None


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "float32", "float32", "fp32", 1e-4, None, "fp32", None),
    Precision("fp16", "float16 weights and matmuls, LayerNorm in float32", "float16", "fp16", 1e-2, None, "fp32", "FP16"),
    # bf16 rows in bench are PyTorch autocast on CPUs or bf16 graphs on GPUs: judged by cosine, the
    # relative-L2 bound is the exported graph's
    Precision("bf16", "bfloat16 weights and matmuls, LayerNorm in float32", "bfloat16", "bf16", 3e-2, DEFAULT_MIN_COSINE, "bf16",
              "BF16"),
    Precision("int8", "int8 matmuls quantised from the fp32 graph (static Q/DQ or dynamic)", None, "fp32", None,
              DEFAULT_MIN_COSINE, "int8", "INT8", ("static", "dynamic")),
)}


def precision_names(quantized: bool | None = None) -> tuple[str, ...]:
    """The names in table order; ``quantized`` True/False keeps only quantisations / float dtypes."""
    return tuple(n for n, p in PRECISIONS.items() if quantized is None or p.quantized == quantized)


def get_precision(name: str) -> Precision:
    """The table entry for ``name``; an unknown name is an ``InvalidRequest`` naming the known ones."""
    p = PRECISIONS.get(name)
    if p is None:
        raise InvalidRequest(f"unknown precision {name!r}; precisions: {', '.join(PRECISIONS)}")
    return p


def check_supported(what: str, supported: tuple[str, ...], precision: str, hint: str = "") -> None:
    """Refuse ``precision`` for ``what`` (an export format, a backend) unless it is in ``supported``: one line naming what exists."""
    get_precision(precision)
    if precision not in supported:
        raise InvalidRequest(f"{what} does not support precision {precision!r}; it supports {', '.join(supported) or 'none'}"
                             + (f" ({hint})" if hint else ""))


def precision_label(precision: str, quant_mode: str | None = None) -> str:
    """A bench row's label: the precision, with a non-default quantisation mode appended (``int8-dynamic``)."""
    p = get_precision(precision)
    return f"{precision}-{quant_mode}" if p.quant_modes and quant_mode and quant_mode != p.quant_modes[0] else precision


def parse_precision_label(label: str) -> tuple[str, str | None]:
    """``int8-dynamic`` -> ("int8", "dynamic"); ``fp16`` -> ("fp16", None); unknown labels name the known ones."""
    name, _, mode = label.partition("-")
    p = PRECISIONS.get(name)
    if p is None or (mode and mode not in p.quant_modes):
        known = [n for n in PRECISIONS] + [f"{n}-{m}" for n, q in PRECISIONS.items() for m in q.quant_modes[1:]]
        raise InvalidRequest(f"unknown precision {label!r}; precisions: {', '.join(known)}")
    return name, (mode or (p.quant_modes[0] if p.quant_modes else None))
