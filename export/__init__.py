"""Export: ONNX models and TensorRT engines with self-describing sidecars."""
