"""The sidecar: a JSON file next to every artifact that makes it self-describing (torch-free).

``model.onnx`` -> ``model.onnx.json``; ``model.engine`` -> ``model.engine.json``. The artifact itself
stays a plain ONNX file or serialized TensorRT plan, loadable by trtexec, Triton or a C++ app with
no wherevit code; everything else -- inputs, outputs and their meaning, preprocessing, batch
profile, precision, library and GPU targets, hashes, export parity -- lives here.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wherevit import __version__
from wherevit.base.errors import WherevitError
from wherevit.base.io import atomic_write_text, sha256_file

__all__ = ["SIDECAR_FORMAT", "SidecarError", "sidecar_path", "write_sidecar", "read_sidecar", "artifact_record"]

SIDECAR_FORMAT = "wherevit.artifact/1"


class SidecarError(WherevitError, ValueError):
    """A missing, malformed or mismatching sidecar."""


def sidecar_path(artifact: str | os.PathLike) -> Path:
    return Path(str(artifact) + ".json")


def artifact_record(artifact: str | os.PathLike) -> dict:
    p = Path(artifact)
    return {"file": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def write_sidecar(artifact: str | os.PathLike, meta: dict[str, Any], record: dict | None = None) -> Path:
    """Write ``meta`` plus format, hash, size and creation time beside ``artifact`` (atomically).

    ``record``: the artifact's :func:`artifact_record` when the caller already has it (hashing a
    large graph twice is wasted seconds)."""
    data = {
        "format": SIDECAR_FORMAT,
        "artifact": record or artifact_record(artifact),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wherevit_version": __version__,
        **meta,
    }
    return atomic_write_text(sidecar_path(artifact), json.dumps(data, indent=2) + "\n")


def read_sidecar(artifact: str | os.PathLike, verify_hash: bool = True) -> dict:
    """Read and check the sidecar of ``artifact``; the artifact's SHA-256 must match the sidecar's."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise FileNotFoundError(f"artifact not found: {artifact}")
    sc = sidecar_path(artifact)
    if not sc.is_file():
        raise SidecarError(f"{artifact}: no sidecar {sc.name} beside it; re-export with `wherevit export` "
                           "(the sidecar records preprocessing, outputs and build targets)")
    try:
        data = json.loads(sc.read_text())
    except json.JSONDecodeError as e:
        raise SidecarError(f"{sc}: not valid JSON ({e})") from e
    if data.get("format") != SIDECAR_FORMAT:
        raise SidecarError(f"{sc}: format {data.get('format')!r}, expected {SIDECAR_FORMAT!r}")
    if verify_hash:
        want = data.get("artifact", {}).get("sha256")
        have = sha256_file(artifact)
        if want != have:
            raise SidecarError(f"{artifact} does not match its sidecar {sc.name}: file SHA-256 {have[:16]}..., "
                               f"sidecar says {str(want)[:16]}...; the file was replaced or corrupted -- re-export both together")
    return data
