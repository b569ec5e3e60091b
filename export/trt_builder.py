"""One TensorRT engine builder for ``tensorrt`` (10.x, 11.x) and ``tensorrt_rtx``.

The libraries share the Python API family but differ in how precision is expressed:

* TensorRT 10.x: a float32 ONNX plus builder flags (``FP16``/``BF16``) -- "weakly typed"; or,
  on request, a strongly typed network built from an fp16/bf16 ONNX.
* TensorRT 11.x: strongly typed only; the precision is the ONNX's own types.
* TensorRT-RTX: strongly typed, builds without a GPU for explicit compute-capability targets.
* INT8 is explicit quantisation everywhere: the Q/DQ nodes of the quantised ONNX say what runs in
  int8 (TensorRT 10.x weakly typed also needs the ``INT8`` builder flag to honour them).

``plan_build`` turns (library, version, precision) into a ``BuildPlan`` -- pure data, unit-tested
for every flavour -- and ``build_engine`` carries a plan out with the real library, imported only
there, so a missing library disables engine building, not the package.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wherevit.base.errors import InvalidRequest, WherevitError
from wherevit.base.io import atomic_write_bytes
from wherevit.base.precision import get_precision

__all__ = [
    "TrtFlavour", "BuildPlan", "plan_build", "detect_flavour", "build_engine", "EngineBuildError",
    "OnnxParseError", "parse_compute_capabilities", "DEFAULT_RTX_TARGETS",
]

LIBRARIES = ("tensorrt", "tensorrt_rtx")
WEAK_ONNX_PRECISION = "fp32"  # weakly typed TensorRT 10 parses a float32 graph and lowers it by builder flags
# TensorRT-RTX targets when building without a GPU: Ampere, Ada and Blackwell consumer/workstation
# parts. (Hopper, 9.0, is not supported by TensorRT-RTX at all.)
DEFAULT_RTX_TARGETS = ("SM80", "SM86", "SM89", "SM120")


class EngineBuildError(WherevitError, RuntimeError):
    """The builder could not produce an engine."""


class OnnxParseError(EngineBuildError):
    """The TensorRT ONNX parser rejected the model; the message lists each error with its node."""


@dataclass(frozen=True)
class TrtFlavour:
    module: str  # "tensorrt" or "tensorrt_rtx"
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self) -> bool:
        return self.module == "tensorrt_rtx"

    @property
    def strongly_typed_only(self) -> bool:
        return self.is_rtx or self.major >= 11

    @property
    def has_compute_capability_targets(self) -> bool:
        return self.is_rtx


@dataclass(frozen=True)
class BuildPlan:
    """What to ask the builder for. ``onnx_precision`` is the ONNX the network must be parsed from."""

    flavour: TrtFlavour
    precision: str
    onnx_precision: str
    network_flags: tuple[str, ...] = ()
    builder_flags: tuple[str, ...] = ()
    compute_capabilities: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flavour"] = asdict(self.flavour)
        return d


def parse_compute_capabilities(spec: str | None) -> tuple[str, ...]:
    """"8.6,8.9" or "86,sm89" -> ("SM86", "SM89")."""
    if not spec:
        return ()
    out = []
    for item in spec.split(","):
        s = item.strip().upper().removeprefix("SM").replace(".", "")
        if not s.isdigit() or len(s) < 2:
            raise InvalidRequest(f"compute capability {item!r} is not like 8.6 or sm86")
        out.append(f"SM{s}")
    return tuple(out)


def plan_build(flavour: TrtFlavour, precision: str, compute_capabilities: tuple[str, ...] = (),
               strongly_typed: bool | None = None) -> BuildPlan:
    """Decide network flags, builder flags and the ONNX precision for a library version.

    A quantised precision (``int8``): the network is parsed from the Q/DQ ONNX (``onnx_precision`` "int8")."""
    p = get_precision(precision)  # an unknown name lists the table's
    qdq = ("explicit quantisation: int8 where the ONNX has Q/DQ nodes, float elsewhere",) if p.quantized else ()
    if compute_capabilities and not flavour.has_compute_capability_targets:
        raise InvalidRequest(f"{flavour.module} {flavour.version} builds for the GPU it runs on; "
                         "compute-capability targets are a TensorRT-RTX option")
    if flavour.is_rtx:
        ccs = compute_capabilities or DEFAULT_RTX_TARGETS
        if "SM90" in ccs:
            raise InvalidRequest("TensorRT-RTX does not support compute capability 9.0 (H100/H200); build with the full `tensorrt`")
        return BuildPlan(flavour, precision, precision, ("STRONGLY_TYPED",), (), ccs,
                         ("strongly typed: precision comes from the ONNX",) + qdq)
    if flavour.strongly_typed_only:
        if strongly_typed is False:
            raise InvalidRequest(f"TensorRT {flavour.version} is strongly typed only; weak typing (precision flags) was removed in 11.0")
        return BuildPlan(flavour, precision, precision, ("STRONGLY_TYPED",), (), (),
                         ("strongly typed: precision comes from the ONNX",) + qdq)
    if strongly_typed:
        return BuildPlan(flavour, precision, precision, ("STRONGLY_TYPED",), (), (),
                         ("strongly typed on request",) + qdq)
    flags = (p.trt_flag,) if p.trt_flag else ()  # the precision table's TensorRT BuilderFlag (none for fp32)
    if p.quantized:  # TensorRT 10 weakly typed honours Q/DQ nodes with the INT8 flag
        return BuildPlan(flavour, precision, precision, (), flags, (), qdq)
    notes = ("weakly typed: float32 ONNX, the builder may pick lower-precision kernels",)
    return BuildPlan(flavour, precision, WEAK_ONNX_PRECISION, (), flags, (), notes)


def detect_flavour(lib: str = "auto") -> TrtFlavour:
    """The TensorRT library to use: ``tensorrt`` if installed (the full builder), else ``tensorrt_rtx``."""
    names = LIBRARIES if lib == "auto" else (lib,)
    if lib not in ("auto",) + LIBRARIES:
        raise InvalidRequest(f"--trt-lib must be auto, tensorrt or tensorrt_rtx, got {lib!r}")
    for name in names:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # a stub or broken install: say so, try the next one
            if lib != "auto":
                raise EngineBuildError(f"{name} is installed but does not import: {e}") from e
            continue
        return TrtFlavour(name, str(mod.__version__))
    raise EngineBuildError(
        f"no TensorRT library found (looked for {', '.join(names)}); "
        "install `pip install tensorrt-rtx` (builds on any machine) or `tensorrt` (datacenter GPUs)"
    )


def build_engine(onnx_path: Path, out: Path, plan: BuildPlan, input_names: str | list[str], input_chw: tuple[int, int, int],
                 batch: tuple[int, int, int], workspace_mb: int = 4096, timing_cache: Path | None = None) -> dict:
    """Parse ``onnx_path``, build per ``plan`` with one optimisation profile (the same batch range for
    every input), write the plan atomically; returns the facts for the sidecar."""
    input_names = [input_names] if isinstance(input_names, str) else list(input_names)
    trt = importlib.import_module(plan.flavour.module)
    logger = _CapturingLogger(trt)
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    network, parser = _parse_onnx(trt, builder, logger, onnx_path, plan)  # the parser owns the weights: keep it until built
    config = _builder_config(trt, builder, plan, workspace_mb)
    profile = _batch_profile(builder, input_names, input_chw, batch)
    config.add_optimization_profile(profile)
    cache = _load_timing_cache(config, plan, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{plan.flavour.module} build failed:\n" + "\n".join(logger.errors[-20:] or ["(no message)"]))
    del parser
    atomic_write_bytes(out, bytes(serialized))
    if cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    c, h, w = input_chw
    return {
        "library": plan.flavour.module,
        "version": plan.flavour.version,
        "precision": plan.precision,
        "onnx_precision": plan.onnx_precision,
        "network_flags": list(plan.network_flags),
        "builder_flags": list(plan.builder_flags),
        # RTX: the requested targets; full TensorRT: the GPU it was built on (engines are tied to it)
        "compute_capabilities": [f"{cc[2:-1]}.{cc[-1]}" for cc in plan.compute_capabilities] or _build_gpu_cc(),
        "profile": {"inputs": input_names, "min": [batch[0], c, h, w], "opt": [batch[1], c, h, w], "max": [batch[2], c, h, w]},
        "workspace_mb": workspace_mb,
        "build_seconds": round(time.perf_counter() - t0, 2),
        "warnings": logger.warnings[-10:],
    }


def _parse_onnx(trt, builder, logger, onnx_path: Path, plan: BuildPlan):
    """(network, parser), parsed with the plan's network flags; a parser error lists every failing node."""
    flags = 0
    for name in plan.network_flags:
        member = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if member is not None:  # 11.x may drop a flag that became the only behaviour
            flags |= 1 << int(member)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            errs.append(f"  node {e.node_name() or '?'} ({e.node_operator() or '?'}): {e.desc()}")
        raise OnnxParseError(f"{plan.flavour.module} {plan.flavour.version} ONNX parser rejected {onnx_path}:\n" + "\n".join(errs))
    return network, parser


def _builder_config(trt, builder, plan: BuildPlan, workspace_mb: int):
    """Workspace, precision flags (TensorRT 10 weak typing) and compute-capability targets (RTX)."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.compute_capabilities:
        config.num_compute_capabilities = len(plan.compute_capabilities)
        for i, cc in enumerate(plan.compute_capabilities):
            member = getattr(trt.ComputeCapability, cc, None)
            if member is None:
                known = [m for m in trt.ComputeCapability.__members__ if m.startswith("SM")]
                raise InvalidRequest(f"{plan.flavour.module} does not know compute capability {cc}; it knows {', '.join(known)}")
            config.set_compute_capability(member, i)
    return config


def _batch_profile(builder, input_names: list[str], input_chw: tuple[int, int, int], batch: tuple[int, int, int]):
    """One optimisation profile: the same min/opt/max batch for every input."""
    profile = builder.create_optimization_profile()
    c, h, w = input_chw
    for name in input_names:
        profile.set_shape(name, (batch[0], c, h, w), (batch[1], c, h, w), (batch[2], c, h, w))
    return profile


def _load_timing_cache(config, plan: BuildPlan, timing_cache: Path | None):
    """Reuse kernel timings across builds (full TensorRT; TensorRT-RTX has no timing cache)."""
    if timing_cache is None or plan.flavour.is_rtx or not hasattr(config, "create_timing_cache"):
        return None
    blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, False)
    return cache


def _build_gpu_cc() -> list[str]:
    from wherevit.runtime.backends.cuda import device_compute_capability

    cc = device_compute_capability()
    return [cc] if cc else []


class _CapturingLogger:
    """A trt.ILogger that keeps errors and warnings for error messages and the sidecar."""

    def __new__(cls, trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.warnings: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    self.errors.append(str(msg))
                elif severity == trt.ILogger.Severity.WARNING:
                    self.warnings.append(str(msg))

        return Logger()
