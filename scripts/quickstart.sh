#!/usr/bin/env bash
# Set up .venv, then pretrain a tiny ViT with DINO + SP on generated scenes, evaluate it, export
# ONNX + a TensorRT(-RTX) engine, and benchmark -- a few minutes on a CPU, nothing downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/wherevit quickstart --out "${1:-runs/quickstart}"
