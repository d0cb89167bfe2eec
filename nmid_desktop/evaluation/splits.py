"""Test splits: the paper's "hard" split and stratified k-fold.

Hard split (GDL-NMID evaluation protocol): the pixels of the model input are
downscaled (64 x 64), z-scored per pixel position, projected by PCA (50
components), and clustered by K-Means with one cluster per class. Each image's
hardness combines two signals, each turned into a within-class percentile rank:

- its distance to *its class's* centroid, where classes are matched one-to-one to
  K-Means clusters by the Hungarian algorithm on the class/cluster contingency
  table (an image K-Means placed in another class's cluster is far from its own);
- its silhouette (Rousseeuw 1987) with respect to the classes in PCA space (low
  or negative: nearer another class than its own).

The hardest ``test_fraction`` of images *within each class* form the test set.
Taken over the whole set, the hardest 10 % fall almost entirely in one class on
NEU (its most spread-out class), which is why the selection is per class. This
is our reading of the paper's description; all randomness is seeded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.jobs import Job, Progress
from nmid_desktop.core.store.base import ImageFilter, Store

PIXEL_SIZE = 64
N_COMPONENTS = 50
TEST_FRACTION = 0.10


def hardness_scores(
    features: np.ndarray, labels: Sequence[str], *, n_components: int = N_COMPONENTS, seed: int = 0
) -> np.ndarray:
    """Hardness of each image in [0, 1] (1: hardest of its class).

    Args:
        features: Shape (N, P), e.g. flattened 64 x 64 pixels.
        labels: N class names.
        n_components: PCA components (capped by N - 1 and P).
        seed: Seeds PCA and K-Means.

    Returns:
        Shape (N,): the mean of the within-class percentile ranks of the distance to the
        class's matched centroid (far = hard) and of the silhouette (low = hard).
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_samples
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features must be (N, P) with N = {len(y)} labels, got {x.shape}")
    classes, y_idx = np.unique(y, return_inverse=True)
    n, n_classes = len(x), len(classes)
    if n_classes < 2 or n <= n_classes:
        raise NmidError("the hard split needs at least two classes and more images than classes")
    z = StandardScaler().fit_transform(x)
    comps = max(1, min(n_components, n - 1, x.shape[1]))
    points = PCA(n_components=comps, random_state=seed).fit_transform(z)
    kmeans = KMeans(n_clusters=n_classes, n_init=10, random_state=seed).fit(points)
    contingency = np.zeros((n_classes, n_classes))
    np.add.at(contingency, (y_idx, kmeans.labels_), 1)
    rows, cols = linear_sum_assignment(-contingency)  # class -> cluster, maximising agreement
    centroid_of_class = kmeans.cluster_centers_[cols[np.argsort(rows)]]
    distance = np.linalg.norm(points - centroid_of_class[y_idx], axis=1)
    silhouette = silhouette_samples(points, y_idx)
    hardness = np.empty(n)
    for c in range(n_classes):
        members = np.flatnonzero(y_idx == c)
        hardness[members] = (_percentile_rank(distance[members]) + _percentile_rank(-silhouette[members])) / 2
    return hardness


def _percentile_rank(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share their mean rank)."""
    from scipy.stats import rankdata

    if len(values) == 1:
        return np.ones(1)
    return (rankdata(values) - 1) / (len(values) - 1)


def hard_test_mask(
    hardness: np.ndarray, labels: Sequence[str], ids: Sequence[int], *, test_fraction: float = TEST_FRACTION
) -> np.ndarray:
    """Pick the hardest ``test_fraction`` of each class as the test set.

    Each class with at least two images gives ``max(1, round(fraction * n))`` test images
    but always keeps one for training; ties in hardness are broken by image id.

    Returns:
        Boolean mask, shape (N,): True for test images.
    """
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    y = np.asarray(labels)
    ids = np.asarray(ids, dtype=np.int64)
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < 2:
            continue
        n_test = min(len(members) - 1, max(1, int(round(test_fraction * len(members)))))
        order = members[np.lexsort((ids[members], -hardness[members]))]
        mask[order[:n_test]] = True
    return mask


def stratified_folds(labels: Sequence[str], n_folds: int = 5, *, seed: int = 0) -> list[np.ndarray]:
    """Stratified k-fold test masks (every image is tested exactly once).

    Returns:
        ``n_folds`` boolean masks of shape (N,).

    Raises:
        NmidError: Fewer than 2 folds, or a class with fewer images than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels)
    if n_folds < 2:
        raise NmidError("k-fold needs at least 2 folds")
    _, counts = np.unique(y, return_counts=True)
    if counts.min() < n_folds:
        raise NmidError(f"a class has only {counts.min()} images: too few for {n_folds} folds")
    masks = []
    for _, test in StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        mask = np.zeros(len(y), dtype=bool)
        mask[test] = True
        masks.append(mask)
    return masks


def pixel_features(store: Store, image_ids: Sequence[int], *, size: int = PIXEL_SIZE) -> Job[np.ndarray]:
    """Downscaled model-input pixels of library images, the hard split's raw features.

    Each image is read as the encoders see it (8-bit view, data bar cropped) and resized to
    ``size`` x ``size`` with area averaging.

    Yields:
        Progress per image (cancel points).

    Returns:
        Shape (N, size * size) float32 in [0, 255].
    """
    from PIL import Image

    from nmid_desktop.core.images import model_input

    ids = [int(i) for i in image_ids]
    records = {r.id: r for r in store.images(ImageFilter(ids=ids))}
    out = np.empty((len(ids), size * size), dtype=np.float32)
    for n, image_id in enumerate(ids):
        record = records[image_id]
        view = model_input(record.path, record.page, record.crop_box)
        small = Image.fromarray(view).resize((size, size), Image.Resampling.BOX)
        out[n] = np.asarray(small, dtype=np.float32).reshape(-1)
        if n % 50 == 0 or n == len(ids) - 1:
            yield Progress(n + 1, len(ids), "reading pixels for the hard split")
    return out
