"""Torch-free runtime: open exported artifacts and serve their features.

    from wherevit import runtime
    model = runtime.load("artifacts/model_fp32.onnx")      # backend "auto": best one available
    feats = model.embed(["a.jpg", "b.png"])                # preprocessing from the sidecar
    feats.cls, feats.patch_tokens, feats.patch_grid()
"""

from wherevit.runtime.model import Features, Model, available_backends, load

__all__ = ["load", "Model", "Features", "available_backends"]
