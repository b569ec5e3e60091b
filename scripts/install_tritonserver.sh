#!/usr/bin/env bash
# Install a real Triton Inference Server (tritonserver 2.51, Python backend only; runs on a CPU) from
# the nvidia-pytriton wheel, for the tests (tests/export/test_triton_server.py) and for trying an
# exported repository locally. No container and no GPU needed; the wheel is only unpacked, not
# pip-installed (its numpy<2 pin would replace the project's numpy).
#
#   bash scripts/install_tritonserver.sh [DEST]        # default DEST: .venv/tritonserver (WHEREVIT_VENV)
#
# DEST/pytriton/tritonserver/{bin/tritonserver,backends/python}  the server and its Python backend
#                                                                 (the stub for this venv's Python copied in)
# DEST/nvidia_pytriton.libs                                       the libraries it links (LD_LIBRARY_PATH)
# DEST/python                                                     the Python environment of Triton's Python
#     backend: numpy<2 (the 2.51 stub is built against NumPy 1's ABI: under numpy 2 BYTES tensors arrive
#     garbled), opencv-python-headless, and onnxruntime (the tests' stand-in for the onnxruntime backend,
#     which this build lacks). Triton finds it through PATH (DEST/python/bin first), as PyTriton does it.
# DEST/install.json                                               what was installed, for the tests
#
# Run it with the server:  LD_LIBRARY_PATH=DEST/nvidia_pytriton.libs:<libpython dir> PATH=DEST/python/bin:$PATH \
#   DEST/pytriton/tritonserver/bin/tritonserver --model-repository REPO \
#   --backend-directory DEST/pytriton/tritonserver/backends --http-address 127.0.0.1 --grpc-address 127.0.0.1 --allow-metrics false
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WHEREVIT_VENV:-.venv}
DEST=${1:-$VENV/tritonserver}
PY="$VENV/bin/python"
PYTRITON=0.7.0
if [ ! -x "$PY" ]; then
  echo "install_tritonserver: $PY not found; run scripts/setup.sh first" >&2
  exit 1
fi
if [ -f "$DEST/install.json" ] && grep -q "\"pytriton\": \"$PYTRITON\"" "$DEST/install.json"; then
  echo "tritonserver (nvidia-pytriton $PYTRITON) already installed in $DEST"
  exit 0
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: "nvidia-pytriton==$PYTRITON" -d "$TMP/wheel"
STAGE="$DEST.partial"
rm -rf "$STAGE"
mkdir -p "$STAGE"
# Unpack the server and its libraries only (zipfile keeps no file modes: restore them from the archive).
"$PY" - "$TMP"/wheel/nvidia_pytriton-*.whl "$STAGE" <<'EOF'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/")):
            path = z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                os.chmod(path, mode)
EOF
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
STUB="$STAGE/pytriton/tritonserver/python_backend_stubs/$PYVER/triton_python_backend_stub"
if [ ! -f "$STUB" ]; then
  echo "install_tritonserver: nvidia-pytriton $PYTRITON has no Python backend stub for Python $PYVER" >&2
  exit 1
fi
cp "$STUB" "$STAGE/pytriton/tritonserver/backends/python/triton_python_backend_stub"
chmod 755 "$STAGE/pytriton/tritonserver/backends/python/triton_python_backend_stub"
# The backend's Python: the interpreter this venv was made from, so the stub's libpython matches it.
BASE=$("$PY" -c 'import sys; print(sys._base_executable)')
ORT=$("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)')
"$BASE" -m venv "$STAGE/python"
"$STAGE/python/bin/python" -m pip install -q --upgrade pip
"$STAGE/python/bin/python" -m pip install -q "numpy<2" opencv-python-headless "onnxruntime==$ORT"
LIBDIR=$("$BASE" -c 'import sysconfig as s; print(s.get_config_var("LIBDIR") or "")')
"$PY" - "$STAGE/install.json" "$PYTRITON" "$PYVER" "$LIBDIR" <<'EOF'
import json, sys
path, pytriton, pyver, libdir = sys.argv[1:]
json.dump({"pytriton": pytriton, "tritonserver": "2.51.0", "python": pyver, "libpython_dir": libdir}, open(path, "w"), indent=1)
EOF
rm -rf "$DEST"
mv "$STAGE" "$DEST"
echo "tritonserver (nvidia-pytriton $PYTRITON, Python backend for Python $PYVER) installed in $DEST"
