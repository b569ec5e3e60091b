"""The registries have one shape: a new backend, export format, plug-in or head task is one class and one
registration, added by us or by another package's entry point (loaded lazily, by name); a duplicate name
is refused everywhere and an unknown one reads the same way in every registry."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from wherevit.base.sidecar import read_sidecar, sidecar_path, write_sidecar
from wherevit.export.api import ExportRequest, export_artifacts
from wherevit.export.formats import ExportFormat, format_chain, register_format, registered_formats
from wherevit.export.formats import base as formats_base
from wherevit.export.request import StepResult
from wherevit.runtime import load
from wherevit.runtime.backends import Backend, auto_order, registered_backends
from wherevit.runtime.backends import base as backends_base
from wherevit.runtime.backends.base import register_backend


@pytest.fixture
def clean_registries():
    """Registrations made by a test are undone after it."""
    saved_b, saved_f = backends_base.BACKENDS.snapshot(), formats_base.FORMATS.snapshot()
    yield
    backends_base.BACKENDS.restore(saved_b)
    formats_base.FORMATS.restore(saved_f)


class NumpyOnnxCopy(ExportFormat):
    """A toy format: the ONNX graph's bytes reversed, as its own artifact kind."""

    name = "toy"
    suffixes = (".toy",)
    needs = ("onnx",)

    def build(self, ctx):
        src = ctx.produced["onnx"]
        out = ctx.track(ctx.artifact_path(self.name, ctx.sidecar.precision, self.suffixes[0]))
        out.write_bytes(src.read_bytes()[::-1])
        meta = dataclasses.replace(read_sidecar(src), kind="toy", artifact=None)
        ctx.track(sidecar_path(out))
        return StepResult(out, write_sidecar(out, meta))


class ToyBackend(Backend):
    """Runs .toy artifacts by un-reversing them into ONNX Runtime: proves a backend is one class."""

    name = "toy-ort"
    kinds = ("toy",)
    auto_priority = 5  # preferred over ort-cpu for toy artifacts

    def _activate_impl(self):
        import onnxruntime as ort

        self.sess = ort.InferenceSession(self.artifact.read_bytes()[::-1], providers=["CPUExecutionProvider"])

    def _infer_impl(self, feeds):
        return dict(zip(self.output_names, self.sess.run(self.output_names, dict(feeds))))


def test_toy_format_and_backend_plug_in_through_the_registries(trained_run, tmp_path, clean_registries):
    register_format(NumpyOnnxCopy)
    register_backend(ToyBackend)
    assert [f.name for f in format_chain("toy")] == ["onnx", "toy"]
    res = export_artifacts(ExportRequest(str(trained_run), tmp_path, format="toy", batch=(1, 2, 4)))
    assert list(res.artifacts) == ["onnx", "toy"] and res.primary.suffix == ".toy"
    assert auto_order()[0] == "toy-ort"
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with load(res.primary) as toy, load(res.onnx, backend="ort-cpu") as ref:
        assert toy.backend.name == "toy-ort"
        np.testing.assert_array_equal(toy.run(x).cls, ref.run(x).cls)


def test_duplicate_names_are_refused(clean_registries):
    class Another(ToyBackend):
        name = "ort-cpu"

    with pytest.raises(ValueError, match="'ort-cpu' is already registered"):
        register_backend(Another)

    class OtherOnnx(NumpyOnnxCopy):
        name = "onnx"

    with pytest.raises(ValueError, match="'onnx' is already registered"):
        register_format(OtherOnnx)


def test_unknown_format_names_the_registered_ones(trained_run, tmp_path):
    # every registry's lookup is Registry.get: one message shape (was "--format must be one of ..." before 0.2)
    with pytest.raises(ValueError, match="unknown export format 'tflite'; registered export formats: engine, onnx, pt2"):
        export_artifacts(ExportRequest(str(trained_run), tmp_path, format="tflite"))
    assert not list(tmp_path.iterdir())  # refused before anything was written


def _fake_distribution(root: Path, group: str, name: str, target: str) -> None:
    """An installed distribution as importlib.metadata sees it: a dist-info with entry_points.txt."""
    dist_name = f"wherevit_toy_{root.name}"
    dist = root / f"{dist_name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {target}\n")


def test_backends_and_formats_from_entry_points(tmp_path, monkeypatch, clean_registries):
    mod = tmp_path / "wherevit_toy_plugin.py"
    mod.write_text(f"from {__name__} import NumpyOnnxCopy, ToyBackend  # noqa\n")  # this (already imported) module
    _fake_distribution(tmp_path / "b", backends_base.ENTRY_POINT_GROUP, "toy-ort", "wherevit_toy_plugin:ToyBackend")
    _fake_distribution(tmp_path / "f", formats_base.ENTRY_POINT_GROUP, "toy", "wherevit_toy_plugin:NumpyOnnxCopy")
    for p in (tmp_path, tmp_path / "b", tmp_path / "f"):
        monkeypatch.syspath_prepend(str(p))
    backends_base.BACKENDS.reload_entry_points()
    formats_base.FORMATS.reload_entry_points()
    assert "toy-ort" not in backends_base.BACKENDS.snapshot()[0]
    assert registered_backends()["toy-ort"].__name__ == "ToyBackend"
    assert registered_formats()["toy"].__name__ == "NumpyOnnxCopy"
    sys.modules.pop("wherevit_toy_plugin", None)


# -- one shape for every registry ------------------------------------------------------------------

def _registries():
    from wherevit.train.downstream.tasks import HEAD_TASKS
    from wherevit.train.plugins.base import PLUGINS

    return {"backend": backends_base.BACKENDS, "export format": formats_base.FORMATS, "plug-in": PLUGINS, "head task": HEAD_TASKS}


@pytest.mark.parametrize("kind", ["backend", "export format", "plug-in", "head task"])
def test_every_registry_reads_an_unknown_name_the_same_way(kind):
    reg = _registries()[kind]
    with pytest.raises(ValueError) as e:
        reg.get("nope")
    assert str(e.value) == f"unknown {kind} 'nope'; registered {kind}s: {', '.join(reg.names())}"
    assert reg.names() == sorted(reg.items())  # names() lists without importing; items() imports: the same set


def test_entry_points_are_loaded_by_name_only(tmp_path, monkeypatch):
    """get(name) imports that entry point's module alone; names() imports none; a broken one is named with its reason."""
    from wherevit.base.registry import Registry

    (tmp_path / "wherevit_lazy_ok.py").write_text("class Thing:\n    name = 'ok'\n")
    (tmp_path / "wherevit_lazy_heavy.py").write_text("raise ImportError('needs a library that is not installed')\n")
    dist = tmp_path / "wherevit_lazy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wherevit_lazy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[wherevit.test_lazy]\nok = wherevit_lazy_ok:Thing\nheavy = wherevit_lazy_heavy:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("thing", "wherevit.test_lazy")
    assert reg.names() == ["heavy", "ok"]
    assert "wherevit_lazy_ok" not in sys.modules and "wherevit_lazy_heavy" not in sys.modules
    assert reg.get("ok").__name__ == "Thing"
    assert "wherevit_lazy_ok" in sys.modules and "wherevit_lazy_heavy" not in sys.modules
    with pytest.raises(ValueError, match=r"unknown thing 'heavy'; registered things: ok; thing 'heavy' .* cannot be imported "
                                         r"here: needs a library"):
        reg.get("heavy")
    assert reg.names() == ["ok"]
    sys.modules.pop("wherevit_lazy_ok", None)


def test_torch_backends_are_entry_points_and_auto_imports_no_torch(onnx_artifact):
    """runtime.load(backend="auto") lists every backend (the PyTorch ones are entry points) without importing torch;
    runtime.load(backend="torch-eager") imports it by name, with no bench in between."""
    import subprocess

    code = (
        "import sys, numpy as np\n"
        "from wherevit import runtime\n"
        "from wherevit.runtime.backends.base import BACKENDS\n"
        f"art = {str(onnx_artifact)!r}\n"
        "assert {'torch-eager', 'torch-compile', 'pt2'} <= set(BACKENDS.items())\n"
        "with runtime.load(art) as m:\n"
        "    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)\n"
        "    a = m.run(x).cls\n"
        "    assert m.backend.name == 'ort-cpu'\n"
        "assert 'torch' not in sys.modules, 'auto imported torch'\n"
        "with runtime.load(art, backend='torch-eager') as m:\n"
        "    b = m.run(x).cls\n"
        "assert np.abs(a - b).max() < 1e-3, np.abs(a - b).max()\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr
