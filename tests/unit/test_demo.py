"""The demo library: deterministic, ImageFolder layout, a job that reports progress and can stop."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from nmid_desktop.core.demo import DEMO_CLASSES, generate_demo, make_demo_image
from nmid_desktop.core.errors import Cancelled, NmidError
from nmid_desktop.core.images import read_image
from nmid_desktop.core.jobs import CancelToken, Progress, run_job


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.png"))
    }


def test_classes() -> None:
    assert len(DEMO_CLASSES) >= 5
    assert len(set(DEMO_CLASSES)) == len(DEMO_CLASSES)


@pytest.mark.parametrize("cls", DEMO_CLASSES)
def test_make_demo_image_shapes_and_box(cls: str) -> None:
    image, box = make_demo_image(cls, np.random.default_rng(0), size=128, with_bar=True)
    assert image.shape == (128, 128) and image.dtype == np.uint8
    x0, y0, x1, y1 = box
    assert (x0, y0, x1) == (0, 0, 128) and 100 <= y1 < 120
    assert image.std() > 10  # a textured image, not a flat frame
    plain, plain_box = make_demo_image(cls, np.random.default_rng(0), size=128, with_bar=False)
    assert plain_box == (0, 0, 128, 128)


def test_about_one_in_five_without_bar() -> None:
    boxes = [make_demo_image("porous", np.random.default_rng([9, i]), size=64)[1] for i in range(200)]
    without = sum(box[3] == 64 for box in boxes)
    assert 20 <= without <= 60


def test_bad_arguments() -> None:
    with pytest.raises(NmidError, match="unknown demo class"):
        make_demo_image("bananas", np.random.default_rng(0))
    with pytest.raises(NmidError, match="at least 64"):
        make_demo_image("particles", np.random.default_rng(0), size=32)
    with pytest.raises(NmidError, match="per_class"):
        next(generate_demo(Path("unused"), per_class=0))
    with pytest.raises(NmidError, match="seed"):
        next(generate_demo(Path("unused"), seed=-1))


def test_generate_demo_layout_progress_and_result(tmp_path: Path) -> None:
    reports: list[Progress] = []
    written = run_job(generate_demo(tmp_path / "lib", per_class=3, seed=1, size=96), reports.append)
    assert len(written) == 15 and len(reports) == 15
    assert reports[-1].done == reports[-1].total == 15
    assert [r.done for r in reports] == list(range(1, 16))
    for path, label in written:
        assert path.parent == tmp_path / "lib" / label
        assert path.name.startswith(f"{label}_") and path.suffix == ".png"
        image = read_image(path)
        assert image.view8.shape == (96, 96) and image.info.channels == 1
    assert sorted({label for _, label in written}) == sorted(DEMO_CLASSES)


def test_same_seed_gives_identical_files_other_seed_differs(tmp_path: Path) -> None:
    run_job(generate_demo(tmp_path / "a", per_class=2, seed=5, size=80))
    run_job(generate_demo(tmp_path / "b", per_class=2, seed=5, size=80))
    run_job(generate_demo(tmp_path / "c", per_class=2, seed=6, size=80))
    a, b, c = _digests(tmp_path / "a"), _digests(tmp_path / "b"), _digests(tmp_path / "c")
    assert a == b and len(a) == 10
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_images_do_not_depend_on_per_class(tmp_path: Path) -> None:
    small = run_job(generate_demo(tmp_path / "small", per_class=1, seed=2, size=64))
    run_job(generate_demo(tmp_path / "large", per_class=2, seed=2, size=64))
    for path, label in small:
        twin = tmp_path / "large" / label / path.name
        assert twin.read_bytes() == path.read_bytes()


def test_cancel_stops_between_images(tmp_path: Path) -> None:
    token = CancelToken()

    def stop_after_four(progress: Progress) -> None:
        if progress.done == 4:
            token.cancel()

    with pytest.raises(Cancelled):
        run_job(generate_demo(tmp_path / "lib", per_class=5, seed=0, size=64), stop_after_four, token)
    assert len(list((tmp_path / "lib").rglob("*.png"))) == 4


def test_classes_are_separable_but_not_identical() -> None:
    """A plain linear probe on spectral and grey-level features tells the classes apart.

    Guards against a class collapsing into another (e.g. a painter bug drawing
    nothing); the encoder and retrieval tests rely on the classes differing.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = [], []
    for c, cls in enumerate(DEMO_CLASSES):
        for i in range(16):
            image, box = make_demo_image(cls, np.random.default_rng([21, c, i]), size=96)
            micrograph = image[: box[3], :].astype(np.float64)
            micrograph = (micrograph - micrograph.mean()) / (micrograph.std() + 1e-9)
            power = np.abs(np.fft.fft2(micrograph[:80, :80])) ** 2
            fy, fx = np.meshgrid(np.fft.fftfreq(80), np.fft.fftfreq(80), indexing="ij")
            radius = np.minimum((np.hypot(fy, fx) * 2 * 16).astype(int), 15)
            spectrum = np.log1p(np.bincount(radius.ravel(), power.ravel(), minlength=16))
            angle = np.arctan2(fy, fx)[power > np.quantile(power, 0.99)]
            anisotropy = [np.abs(np.mean(np.exp(2j * angle)))]
            histogram = np.histogram(micrograph, bins=8, range=(-3, 3))[0] / micrograph.size
            features.append(np.concatenate([spectrum, histogram, anisotropy]))
            labels.append(c)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = cross_val_score(model, np.array(features), np.array(labels), cv=4).mean()
    assert accuracy > 0.6, accuracy
