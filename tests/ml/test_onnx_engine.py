"""The ONNX Runtime engine: same inputs and embeddings as torch, trusted graphs only, no torch needed.

One contract (same embeddings, same interface) run against both engines; graphs are
exported once per session into a shared cache (~5 s for EfficientNet-Lite0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nmid_desktop.inference.graph import check_graph, ensure_graph, sidecar_path
from nmid_desktop.inference.loader import load_encoder, resolve_engine
from nmid_desktop.inference.preprocess import normalise, symmetric_views
from nmid_desktop.ml.manifest import load_manifest

LITE0 = "efficientnet-lite0-imagenet"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def graph_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture
def shared_cache(graph_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache at one folder for the whole session, so each graph is exported once."""
    monkeypatch.setenv("NMID_CACHE_DIR", str(graph_cache))
    return graph_cache


@pytest.fixture(scope="module")
def neu_sample(neu_dir: Path) -> list[np.ndarray]:
    """Two real NEU images per class (12 grey 200 x 200 micrographs)."""
    files = [f for d in sorted(neu_dir.iterdir()) if d.is_dir() for f in sorted(d.iterdir())[:2]]
    return [np.asarray(Image.open(f).convert("L")) for f in files]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_numpy_normalisation_is_torchs_to_the_bit() -> None:
    import torch

    from nmid_desktop.ml.encoders import normalisation_tensors, normalise_batch

    manifest = load_manifest(LITE0)
    batch = np.random.default_rng(0).integers(0, 256, (3, 224, 224), dtype=np.uint8)
    mean, std = normalisation_tensors(manifest, "cpu")
    expected = normalise_batch(torch.from_numpy(batch), mean, std, "cpu").numpy()
    got = normalise(batch, manifest.mean, manifest.std)
    assert got.shape == (3, 3, 224, 224) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-6


def test_numpy_views_are_the_torch_rotations_and_flips() -> None:
    import torch

    x = np.arange(2 * 5 * 5, dtype=np.uint8).reshape(2, 5, 5)
    t = torch.from_numpy(x)
    rotations = [torch.rot90(t, k, dims=(1, 2)) for k in range(4)]
    expected = torch.cat(rotations + [r.flip(2) for r in rotations]).numpy()
    assert np.array_equal(symmetric_views(x, "d4"), expected)
    assert np.array_equal(symmetric_views(x, "flips")[6:], x[:, ::-1, ::-1])
    assert len({symmetric_views(x, "d4")[i].tobytes() for i in range(0, 16, 2)}) == 8  # 8 distinct views


@pytest.mark.parametrize("name", [LITE0, f"{LITE0}+d4"])
def test_onnxruntime_embeds_real_micrographs_like_torch(
    name: str, shared_cache: Path, neu_sample: list[np.ndarray]
) -> None:
    ort_encoder = load_encoder(name, engine="onnxruntime")
    torch_encoder = load_encoder(name, engine="torch", device="cpu")
    assert (ort_encoder.engine, ort_encoder.device) == ("onnxruntime", "cpu")
    assert torch_encoder.engine == "torch"
    assert ort_encoder.key == torch_encoder.key  # same key: cached embeddings stay valid
    a, b = ort_encoder.embed(neu_sample), torch_encoder.embed(neu_sample)
    assert a.shape == b.shape == (len(neu_sample), 1280)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert _cosines(a, b).min() >= 0.9999


def test_a_trained_vit_runs_on_onnxruntime_like_torch(tmp_path: Path, neu_sample: list[np.ndarray]) -> None:
    import torch

    from nmid_desktop.ml.simclr import export_graph_beside, write_encoder
    from nmid_desktop.ml.vit import MicrographViT, ViTConfig

    base = load_manifest("micrograph-vit")
    torch.manual_seed(0)
    state = MicrographViT(ViTConfig.from_dict(base.config)).state_dict()
    manifest_path, _, _ = write_encoder(state, base, "micrograph-vit", tmp_path / "models", {"n_train": 0})
    assert export_graph_beside(manifest_path) == tmp_path / "models" / "micrograph-vit.onnx"  # as `nmid train` does
    ort_encoder = load_encoder(str(manifest_path), engine="onnxruntime")
    assert ort_encoder.graph.origin == "beside manifest"
    torch_encoder = load_encoder(str(manifest_path), engine="torch", device="cpu")
    assert ort_encoder.key == torch_encoder.key
    assert _cosines(ort_encoder.embed(neu_sample), torch_encoder.embed(neu_sample)).min() >= 0.9999


def test_corrupt_or_stale_graphs_are_refused_and_rebuilt(shared_cache: Path) -> None:
    manifest = load_manifest(LITE0)
    good = ensure_graph(manifest)
    assert check_graph(good.path, manifest) is None
    original = good.path.read_bytes()
    try:
        good.path.write_bytes(original[:-100] + b"\0" * 100)  # same size, different bytes
        assert check_graph(good.path, manifest).startswith("corrupt")
        rebuilt = ensure_graph(manifest)
        assert rebuilt.origin == "exported" and check_graph(rebuilt.path, manifest) is None

        record = json.loads(sidecar_path(good.path).read_text())
        sidecar_path(good.path).write_text(json.dumps({**record, "weights_sha256": "0" * 64}))
        assert check_graph(good.path, manifest).startswith("stale")
        assert ensure_graph(manifest).origin == "exported"
    finally:
        if check_graph(good.path, manifest) is not None:
            ensure_graph(manifest)
    assert ensure_graph(manifest).origin == "cache"


def test_engine_setting_is_checked() -> None:
    from nmid_desktop.core.config import Settings
    from nmid_desktop.core.errors import ConfigError

    assert resolve_engine("onnxruntime", "cpu") == "onnxruntime"
    assert resolve_engine("torch", "cpu") == "torch"
    with pytest.raises(ConfigError, match="engine must be one of"):
        resolve_engine("tensorrt")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        resolve_engine("onnxruntime", "cuda")
    with pytest.raises(ConfigError, match="setting engine"):
        Settings(engine="fast").validate()


# Run in a fresh interpreter in which `import torch` fails, as on a PC without PyTorch.
_TORCH_FREE = textwrap.dedent(
    """
    import importlib.abc, json, sys
    from pathlib import Path

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "timm"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoTorch())
    work = Path(sys.argv[1])
    from nmid_desktop.core.config import Settings
    from nmid_desktop.core.demo import generate_demo
    from nmid_desktop.core.importer import import_folder
    from nmid_desktop.core.jobs import run_job
    from nmid_desktop.core.store import open_library
    from nmid_desktop.inference.graph import GraphError
    from nmid_desktop.inference.loader import load_encoder
    from nmid_desktop.predict.service import Classifier

    result = {"after_import": "torch" in sys.modules}
    run_job(generate_demo(work / "demo", per_class=2, seed=3, size=64))
    store = open_library(work / "lib")
    run_job(import_folder(store, work / "demo"))
    clf = Classifier(store, Settings(), encoder="efficientnet-lite0-imagenet+flip")
    run_job(clf.prepare())
    query = sorted((work / "demo").rglob("*.png"))[0]
    vector = clf.embed_file(query)
    ranking = clf.predict_local(vector, "knn", 3)
    result.update(engine=clf.encoder.engine, device=clf.encoder.device, norm=float((vector ** 2).sum()),
                  top1=ranking.top1, truth=query.parent.name, after_classify="torch" in sys.modules)
    store.close()
    copy = json.loads(Path(sys.argv[2]).read_text())
    copy["name"] = "lite0-copy-without-graph"
    (work / "copy.json").write_text(json.dumps({**copy, "weights": {**copy["weights"]}}))
    try:
        load_encoder(str(work / "copy.json"))
        result["missing_graph"] = "loaded?!"
    except GraphError as exc:
        result["missing_graph"] = str(exc)
    print(json.dumps(result))
    """
)


def test_torch_free_path_embeds_and_classifies(shared_cache: Path, tmp_path: Path) -> None:
    ensure_graph(load_manifest(LITE0))  # the graph a source install exports at first use
    env = {**os.environ, "PYTHONPATH": str(REPO), "NMID_ENGINE": "auto"}
    done = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE, str(tmp_path), str(REPO / "models" / f"{LITE0}.json")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["after_import"] is False and result["after_classify"] is False
    assert (result["engine"], result["device"]) == ("onnxruntime", "cpu")
    assert abs(result["norm"] - 1.0) < 1e-4
    assert result["top1"] == result["truth"]
    assert "no ONNX graph" in result["missing_graph"] and "nmid export-graph" in result["missing_graph"]
    assert "torch" in result["missing_graph"]


def test_nmid_export_graph_writes_a_verified_graph(shared_cache: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    from nmid_desktop.cli import main

    assert main(["export-graph", "--encoder", f"{LITE0}+d4", "--out", str(tmp_path)]) == 0
    graph = tmp_path / f"{LITE0}.onnx"
    assert check_graph(graph, load_manifest(LITE0)) is None
    assert f"{graph} sha256 " in capsys.readouterr().out
