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
from pathlib import PurePath

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


def group_folds(labels: Sequence[str], groups: Sequence[str], n_folds: int = 5, *, seed: int = 0) -> list[np.ndarray]:
    """Stratified group k-fold test masks: all images of one group fall in the same fold.

    Neighbouring frames of one specimen or session in both the training and the test part
    flatter every figure; keeping each group whole measures what a new specimen will see.
    Uses scikit-learn's ``StratifiedGroupKFold`` (class balance kept as far as the groups allow).

    Returns:
        ``n_folds`` boolean masks of shape (N,); every image is tested exactly once.

    Raises:
        NmidError: Fewer than 2 folds, or fewer groups than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(labels)
    g = np.asarray(groups)
    if len(g) != len(y):
        raise NmidError("one group per image")
    if n_folds < 2:
        raise NmidError("group k-fold needs at least 2 folds")
    n_groups = len(set(g.tolist()))
    if n_groups < n_folds:
        raise NmidError(f"only {n_groups} groups: too few for {n_folds} folds (use fewer --folds or another --groups)")
    masks = []
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for _, test in splitter.split(np.zeros(len(y)), y, g):
        mask = np.zeros(len(y), dtype=bool)
        mask[test] = True
        masks.append(mask)
    return masks


GROUP_SOURCES = ("folder", "name", "manifest")


def image_groups(store: Store, image_ids: Sequence[int], spec: str) -> list[str]:
    """The group of each image, from a spec naming where groups come from.

    Specs:
        ``folder:N``: the name of the N-th folder above the original file (``folder:1``: the
            folder holding it; ``folder:2``: the one above, e.g. a specimen folder holding
            class folders).
        ``name:REGEX``: a regular expression searched in the original file name; its first
            group (or the whole match) is the group, e.g. ``name:^(S\\d+)_`` for ``S12_003.tif``.
        ``manifest:CSV:COLUMN``: a CSV with a header; the column ``path``/``file``/``name``
            (first one present) is matched against the original path, then the file name.

    Raises:
        NmidError: A malformed spec, or an image the spec gives no group for (named).
    """
    import re

    source, _, arg = spec.partition(":")
    if source not in GROUP_SOURCES or not arg:
        raise NmidError(f"--groups must be folder:N, name:REGEX or manifest:CSV:COLUMN, not {spec!r}")
    ids = [int(i) for i in image_ids]
    records = {r.id: r for r in store.images(ImageFilter(ids=ids))}
    out: list[str] = []
    if source == "folder":
        try:
            level = int(arg)
        except ValueError:
            level = 0
        if level < 1:
            raise NmidError(f"folder level must be a positive whole number, not {arg!r}")
        for i in ids:
            parents = PurePath(records[i].original_path or str(records[i].path)).parents
            if level > len(parents) - 1:
                raise NmidError(f"{records[i].original_path}: has no folder {level} levels up")
            out.append(str(parents[level - 1]))
        return out
    if source == "name":
        try:
            pattern = re.compile(arg)
        except re.error as exc:
            raise NmidError(f"--groups name: invalid regular expression {arg!r}: {exc}") from None
        for i in ids:
            name = records[i].original_name
            match = pattern.search(name)
            if match is None:
                raise NmidError(f"--groups name:{arg}: no match in file name {name!r} (image {i})")
            out.append(match.group(1) if pattern.groups else match.group(0))
        return out
    return _manifest_groups(records, ids, arg)


def _manifest_groups(records: dict, ids: list[int], arg: str) -> list[str]:
    import csv

    path_text, sep, column = arg.rpartition(":")
    if not sep or not path_text or not column:
        raise NmidError(f"--groups manifest needs CSV:COLUMN, not {arg!r}")
    try:
        with open(path_text, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise NmidError(f"cannot read the manifest {path_text}: {exc.strerror or exc}") from None
    header = list(rows[0].keys()) if rows else []
    key = next((k for k in ("path", "file", "name") if k in header), None)
    if key is None or column not in header:
        raise NmidError(f"{path_text}: needs a path/file/name column and a {column!r} column (has {', '.join(header)})")
    by_path = {(row[key] or "").strip(): (row[column] or "").strip() for row in rows}
    by_name = {PurePath(p).name: g for p, g in by_path.items()}
    out = []
    for i in ids:
        record = records[i]
        group = by_path.get(record.original_path) or by_name.get(record.original_name)
        if not group:
            raise NmidError(f"{path_text}: no {column!r} for {record.original_name} (image {i})")
        out.append(group)
    return out
