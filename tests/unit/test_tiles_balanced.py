"""Tiles of large micrographs and the class-balanced probe (issue 13 point 7), on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from nmid_desktop.core.errors import ConfigError
from nmid_desktop.ml.tiles import tile_grid
from nmid_desktop.predict.probe import ProbePredictor


def test_small_images_get_no_tiles() -> None:
    # NEU's 200 px images are under twice a 224 px input: tiling is the baseline there.
    assert tile_grid(np.zeros((200, 200), np.uint8), 224, 2) == []
    assert tile_grid(np.zeros((447, 1280), np.uint8), 224, 3) == []


def test_tiles_cover_the_image_exactly_once() -> None:
    image = np.arange(960 * 1280, dtype=np.int64).reshape(960, 1280).astype(np.uint8)
    tiles = tile_grid(image, 224, 3)
    assert len(tiles) == 9
    assert sum(t.size for t in tiles) == image.size
    assert tiles[0].shape == (320, 427) and np.array_equal(tiles[0], image[:320, :427])
    assert np.array_equal(tiles[-1], image[640:, 853:])
    with pytest.raises(ConfigError, match="at least 2"):
        tile_grid(image, 224, 1)


def _imbalanced(rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """A common class (200) next to a rare one (10) that overlaps it."""
    common = rng.normal(0.0, 1.0, size=(200, 2))
    rare = rng.normal(1.5, 1.0, size=(10, 2))
    return np.concatenate([common, rare]).astype(np.float32), ["common"] * 200 + ["rare"] * 10


def test_balanced_probe_finds_more_of_the_rare_class() -> None:
    x, y = _imbalanced(np.random.default_rng(0))
    queries = np.random.default_rng(1).normal(1.5, 1.0, size=(200, 2)).astype(np.float32)  # all rare
    plain = ProbePredictor().fit(x, y).rank_many(queries)
    balanced = ProbePredictor(balanced=True).fit(x, y).rank_many(queries)
    recall_plain = np.mean([r.top1 == "rare" for r in plain])
    recall_balanced = np.mean([r.top1 == "rare" for r in balanced])
    assert recall_balanced > recall_plain + 0.3


def test_balanced_probe_equals_plain_on_equal_counts() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = ["a", "b", "c"] * 20
    _, p_plain = ProbePredictor().fit(x, y).predict_proba(x)
    _, p_bal = ProbePredictor(balanced=True).fit(x, y).predict_proba(x)
    assert np.allclose(p_plain, p_bal, atol=1e-6)
