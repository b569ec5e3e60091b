"""Export and engine-build times: ONNX export (with parity) and a TensorRT(-RTX) build, per model.

    python benchmarks/export_times.py --models vit_small_patch16_224 --precisions fp32,fp16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from wherevit.app.bench import machine_info
from wherevit.base.sidecar import read_sidecar
from wherevit.export.api import ExportRequest, export_artifacts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_small_patch16_224")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--batch", default="1:8:64")
    ap.add_argument("--trt-lib", default="auto")
    ap.add_argument("--cc", default="8.6", help="TensorRT-RTX targets (one target keeps the build time comparable)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args()
    from wherevit.export.api import parse_batch
    from wherevit.export.formats.engine import EngineOptions
    from wherevit.export.trt_builder import parse_compute_capabilities

    rows = []
    for model in a.models.split(","):
        for prec in a.precisions.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                res = export_artifacts(ExportRequest(model, Path(tmp), format="engine", precision=prec, batch=parse_batch(a.batch),
                                                     format_options={"engine": EngineOptions(a.trt_lib, parse_compute_capabilities(a.cc))}))
                total = time.perf_counter() - t0
                om, em = read_sidecar(res.onnx), read_sidecar(res.engine)
                row = {"model": model, "precision": prec, "total_s": round(total, 2),
                       "onnx_export_s": om.onnx.export_seconds, "engine_build_s": em.engine.build_seconds,
                       "library": f"{em.engine.library} {em.engine.version}", "targets": em.engine.compute_capabilities,
                       "onnx_mb": round(res.onnx.stat().st_size / 2**20, 1), "engine_mb": round(res.engine.stat().st_size / 2**20, 1),
                       "onnx_parity_rel_l2": om.parity.get("scenes", {}).get("outputs", [{}])[0].get("rel_l2")}
                print(json.dumps(row), flush=True)
                rows.append(row)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "export_times_cpu.json"
    path.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "machine": machine_info(), "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
