"""Export: a checkpoint (or timm name) -> artifacts, each parity-checked against PyTorch fp32, with a sidecar.

``api.py`` runs a chain of formats (``formats/``: onnx, engine, pt2, triton, triton-engine; one file
each, behind one registry) for an ``ExportRequest`` (``request.py``); each format returns a
``StepResult``. INT8 is the step ``quant_step.py`` (ONNX Runtime quantisation, ``quantize.py``, with
cosine parity, ``quant_parity.py``) that the ONNX-based formats consume. ``onnx_export.py`` and
``trt_builder.py`` are the ONNX exporter and the TensorRT builder; ``head_models.py`` wraps a backbone
and a trained head (any registered head task) as one graph; ``parity.py`` is the shared parity check.
"""
