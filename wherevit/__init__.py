"""wherevit: spatially aware ViT pretraining, export and serving.

Each subpackage is a top-level folder of the repository, in layers (a layer imports only the
ones below it; ``tests/test_architecture.py`` runs import-linter to keep it so):

* ``wherevit.app``     (``app/``)     -- CLI, quickstart pipeline, bench, PyTorch reference backend.
* ``wherevit.export``  (``export/``)  -- artifacts (ONNX, TensorRT engines, ...) with a sidecar; torch.
* ``wherevit.train``   (``train/``)   -- pretraining (DINO host + spatial plug-ins); torch and timm.
* ``wherevit.runtime`` (``runtime/``) -- torch-free loading, batching and serving of artifacts.
* ``wherevit.base``    (``base/``)    -- torch-free errors, atomic io, configs, preprocessing, sidecar.

Importing ``wherevit`` itself imports nothing heavy.
"""

__version__ = "0.1.0"
