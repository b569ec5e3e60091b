#!/usr/bin/env bash
# Create .venv and install wherevit with everything needed to train, export, serve and test.
#   WHEREVIT_TORCH="torch==X torchvision==Y"  pick the torch build (default below; "skip" keeps the
#                                              venv's/system's torch, e.g. on a GPU box: use
#                                              WHEREVIT_VENV_ARGS=--system-site-packages too)
#   WHEREVIT_PYTHON=python3.11                 interpreter for the venv
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${WHEREVIT_PYTHON:-python3}
VENV=${WHEREVIT_VENV:-.venv}
TORCH=${WHEREVIT_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv ${WHEREVIT_VENV_ARGS:-} "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ "$TORCH" != "skip" ]; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $TORCH
fi
"$VENV/bin/python" -m pip install -q -e ".[train,export,serve,trt-rtx,openvino,nncf,dev]"
echo "wherevit installed in $VENV ($("$VENV/bin/python" -c 'import torch, onnxruntime; print("torch", torch.__version__, "| onnxruntime", onnxruntime.__version__)'))"
