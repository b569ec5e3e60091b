"""Schemathesis against the Open Inference Protocol's own REST spec, and the spec's schemas on real answers.

The spec (tests/data/open_inference_protocol, Apache-2.0) is used as published except for what a
run needs and the README explains: its templates ``${MODEL_NAME}`` / ``${MODEL_VERSION}`` become
path parameters whose only values are the served models and version (else every request is a 404
before a body is read), and 404 joins the documented answers of the model paths (the spec lists
200 and 400 only; an unknown model or version is a 404 in Triton and here). Checks: all of them but
``positive_data_acceptance``, which cannot hold for any model server: the spec's request schema
admits any input names, shapes and datatypes, and a model takes only its own (400, which the
spec lists). A bounded number of examples keeps the run within a minute.
"""

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -e '.[dev]')")
jsonschema_rs = pytest.importorskip("jsonschema_rs")  # schemathesis' own validator
from helpers import Server  # noqa: E402

MODEL = "vit_tiny_patch16_224"
SPEC = Path(__file__).parents[1] / "data" / "open_inference_protocol" / "open_inference_rest.yaml"
MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def server(onnx_artifact):
    s = Server(onnx_artifact, "--max-wait-ms", "1")
    yield s
    s.stop()


def mapped_spec(models: list[str], version: str) -> dict:
    """The spec with its ``${...}`` templates as path parameters over the served names, and 404 documented."""
    spec = yaml.safe_load(SPEC.read_text())
    not_found = {"description": "Not Found (unknown model or version)",
                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/inference_error_response"}}}}
    paths = {}
    for path, item in spec["paths"].items():
        for p in item.get("parameters", []):
            p["schema"] = {"type": "string", "enum": models if p["name"] == "MODEL_NAME" else [version]}
        if "${" in path:
            for op in (v for k, v in item.items() if k in ("get", "post")):
                op["responses"]["404"] = not_found
        paths[re.sub(r"\$\{(\w+)\}", r"{\1}", path)] = item
    spec["paths"] = paths
    return spec


def test_schemathesis_finds_nothing_against_the_oip_rest_spec(server, tmp_path):
    spec = tmp_path / "oip.yaml"
    spec.write_text(yaml.safe_dump(mapped_spec([MODEL, MODEL + "_images"], "1")))
    cli = Path(sys.executable).parent / "schemathesis"
    cmd = [str(cli), "run", str(spec), "--url", f"http://{server.url}", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
           "--mode", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", "21", "--workers", "1", "--request-timeout", "10",
           "--max-response-time", "10", "--suppress-health-check", "all"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = r.stdout[-3000:]
    assert r.returncode == 0, summary
    tested = re.search(r"Tested: (\d+)", summary)
    cases = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert tested and int(tested.group(1)) == 6, summary  # every operation of the spec
    assert cases and int(cases.group(1)) >= 150 and cases.group(1) == cases.group(2), summary


def _get(url: str, method: str = "GET", body: bytes | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_real_answers_match_the_specs_schemas(server):
    """Random requests almost never reach a 200 from infer; these do, and their bodies must follow the spec."""
    spec = yaml.safe_load(SPEC.read_text())

    def check(name: str, payload: bytes) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
        jsonschema_rs.Draft4Validator(schema).validate(json.loads(payload))  # OpenAPI 3.0 schemas are draft-4 style

    base = f"http://{server.url}"
    status, _, payload = _get(base + "/v2/")  # the spec's spelling of server metadata
    assert status == 200
    check("metadata_server_response", payload)
    status, _, payload = _get(f"{base}/v2/models/{MODEL}/versions/1")
    assert status == 200
    check("metadata_model_response", payload)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    body = json.dumps({"id": "7", "inputs": [{"name": "images", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}],
                       "outputs": [{"name": "cls"}]}).encode()
    status, headers, payload = _get(f"{base}/v2/models/{MODEL}/versions/1/infer", "POST", body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    check("inference_response", payload)
    out = json.loads(payload)
    assert out["id"] == "7" and out["outputs"][0]["shape"] == [2, 64] and len(out["outputs"][0]["data"]) == 128
    status, _, payload = _get(f"{base}/v2/models/{MODEL}/versions/1/infer", "POST", b'{"inputs": []}')
    assert status == 400
    check("inference_error_response", payload)


@pytest.mark.parametrize("method,path,allowed", [
    ("PUT", "/v2/health/live", {"GET", "HEAD"}),
    ("DELETE", f"/v2/models/{MODEL}/versions/1/infer", {"POST"}),
    ("GET", f"/v2/models/{MODEL}/infer", {"POST"}),
    ("POST", "/v2/", {"GET", "HEAD"}),
])
def test_405_names_the_allowed_methods(server, method, path, allowed):
    status, headers, payload = _get(f"http://{server.url}{path}", method, b"{}" if method != "GET" else None)
    assert status == 405 and {m.strip() for m in headers["Allow"].split(",")} == allowed  # RFC 9110 15.5.6
    assert json.loads(payload)["error"].startswith("Method Not Allowed")
