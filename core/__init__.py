"""wherevit: spatially aware ViT pretraining, export and serving.

The package is split by who installs what:

* ``wherevit.train``   -- pretraining (DINO host + spatial plug-ins); needs torch and timm.
* ``wherevit.export``  -- ONNX and TensorRT artifacts with a sidecar; needs torch, timm, onnx.
* ``wherevit.runtime`` -- torch-free loading and serving of those artifacts.

Importing ``wherevit`` itself imports nothing heavy.
"""

__version__ = "0.1.0"
