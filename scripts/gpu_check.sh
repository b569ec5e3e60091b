#!/usr/bin/env bash
# The GPU day in one run: benchmarks/gpu_check.py's steps (bf16 + torch.compile training with every
# plug-in, ONNX on ONNX Runtime's CUDA provider with parity, a CUDA .pt2 run by the C++ app, a
# TensorRT-RTX engine or its refusal on compute capability 9.0, bench rows beside benchmarks/anchors/)
# in at most 10 minutes, into one JSON under benchmarks/results/gpu_check/.
#
#   bash scripts/gpu_check.sh [--dry-run] [--out FILE] [--site DIR] [--cpp-deps DIR] [--only STEPS] [--budget-s S]
#
# --dry-run   check every step's prerequisites and record why each would be skipped; runs nothing heavy
#             (on a machine without a GPU every GPU step records "skipped: <reason>").
# --site DIR  unpacked wheels to import first (PYTHONPATH), e.g. onnxruntime-gpu or tensorrt-rtx carried to a
#             box without a registry. ../shared/gpu/chunk-wheel.sh NAME==VER DEST packs one into <=55 MB parts;
#             carry a part per call (the device tool moves at most 64 MiB a call) into a folder the machine keeps
#             while warm, then: cat p*/part* | xz -d | tar -C DIR -xf -
# --cpp-deps DIR  .deb files for the C++ build where the box lacks them: nlohmann-json3-dev (header-only;
#             here: apt-get download nlohmann-json3-dev). Without OpenCV the app takes .npy batches.
#
# Where wherevit is not installed (a GPU box receives a bare copy of this tree), it is imported from the
# tree through a small shim package. The whole run is killed at WHEREVIT_GPU_CHECK_TIMEOUT s (default 590);
# the JSON is rewritten after every step, so a cut-off run keeps what it did.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${WHEREVIT_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --site) export PYTHONPATH="$(cd "$2" && pwd)${PYTHONPATH:+:$PYTHONPATH}"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exec "$PY" benchmarks/gpu_check.py --help ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if ! "$PY" -c "import wherevit.base" 2>/dev/null; then
  SHIM=$(mktemp -d)
  mkdir -p "$SHIM/wherevit"
  cp wherevit/__init__.py "$SHIM/wherevit/"
  for d in base app train export runtime configs; do ln -s "$PWD/$d" "$SHIM/wherevit/$d"; done
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi
exec timeout --signal=TERM --kill-after=20 "${WHEREVIT_GPU_CHECK_TIMEOUT:-590}" "$PY" benchmarks/gpu_check.py ${ARGS[@]+"${ARGS[@]}"}
