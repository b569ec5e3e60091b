"""TEST-ONLY stand-in for Triton's onnxruntime backend, which the nvidia-pytriton build of tritonserver lacks.

tests/export/test_triton_server.py copies this file as ``REPO/<name>/<v>/model.py`` and swaps the graph
model's ``platform: "onnxruntime_onnx"`` for ``backend: "python"``; every other line of the exported
config (inputs, outputs, max_batch_size, dynamic batching, parameters) stays as exported. It runs the
exported ``model.onnx`` beside it in ONNX Runtime, on the batch Triton's dynamic batcher formed from
all requests of one ``execute`` call, and splits the outputs back per request.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = os.path.dirname(os.path.abspath(__file__))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.batch_sizes = []  # what the dynamic batcher handed over, for the test's log

    def execute(self, requests):
        feeds = {n: [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for r in requests] for n in self.inputs}
        rows = [len(x) for x in feeds[self.inputs[0]]]
        outs = self.session.run(self.outputs, {n: np.concatenate(v) for n, v in feeds.items()})
        print(f"triton_ort_model: one ONNX Runtime run for {len(requests)} request(s), batch {sum(rows)}", flush=True)
        responses, start = [], 0
        for n in rows:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(name, np.ascontiguousarray(o[start:start + n]))
                                                         for name, o in zip(self.outputs, outs)]))
            start += n
        return responses
