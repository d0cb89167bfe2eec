"""Demonstration retrieval: the K labelled images shown beside a query (GDL-NMID step 2).

The paper retrieves the top-K most similar labelled images (cosine of encoder
embeddings) as few-shot demonstrations and compares this against random
sampling; :func:`similar` implements both strategies over a :class:`DemoPool`
(the labelled, non-rejected library) and a :class:`~nmid_desktop.index.Searcher`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from nmid_desktop.core.errors import ConfigError
from nmid_desktop.core.store.base import ImageFilter, Store
from nmid_desktop.index.searcher import Searcher

STRATEGIES = ("similarity", "random")

# (image ids) -> {image_id: (label source, synthetic)}; fills in the details of the few results.
DetailsLookup = Callable[[Sequence[int]], Mapping[int, tuple[str, bool]]]


@dataclass(frozen=True)
class Demonstration:
    """One labelled image shown as an example for a query.

    Attributes:
        image_id: The library image.
        label: Its current label (read from the store, never from the index).
        similarity: Cosine similarity to the query, in [-1, 1].
        source: Who set the label (``import``, ``expert``, ``lmm``, ...); "" when unknown.
        synthetic: True for an accepted synthetic image.
    """

    image_id: int
    label: str
    similarity: float
    source: str = ""
    synthetic: bool = False


@dataclass(frozen=True)
class DemoPool:
    """The images that may serve as demonstrations, with their current labels.

    Attributes:
        labels: image id -> label.
        version: ``store.labels_version()`` it was read at (None when not from a store).
        details: Looks up label source and synthetic flag of a few ids (None: unknown).
    """

    labels: Mapping[int, str]
    version: int | None = None
    details: DetailsLookup | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_store(cls, store: Store, *, include_pending: bool = True) -> DemoPool:
        """The labelled, non-rejected images of a library.

        Accepted synthetic images are included; pending or rejected synthetic ones never are
        (``store.labelled`` enforces that). The version is read *before* the labels, so a label
        set meanwhile makes the pool look older, never newer, and it is re-read next time.

        Args:
            store: The library.
            include_pending: Also use labels nobody has reviewed yet (e.g. set from a prediction).
        """
        version = store.labels_version()
        labels = dict(store.labelled(include_pending=include_pending, include_synthetic=True))

        def details(ids: Sequence[int]) -> dict[int, tuple[str, bool]]:
            if not ids:
                return {}
            return {r.id: (r.label_source or "", r.synthetic) for r in store.images(ImageFilter(ids=list(ids)))}

        return cls(labels=labels, version=version, details=details)

    @property
    def classes(self) -> list[str]:
        """The labels present in the pool, sorted."""
        return sorted(set(self.labels.values()))

    @property
    def ids(self) -> np.ndarray:
        """Pool image ids, sorted, shape (N,) int64."""
        return np.asarray(sorted(self.labels), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)



class DemonstrationSource(Protocol):
    """What the model's few-shot prediction needs from retrieval (the :class:`Classifier` has it)."""

    def embed_image(self, image_id: int) -> np.ndarray:
        """The embedding of a library image. Shape (D,)."""
        ...

    def embed_file(self, path: Path) -> np.ndarray:
        """The embedding of an image file. Shape (D,)."""
        ...

    def similar(
        self, vector: np.ndarray, k: int | None = None, strategy: str | None = None, exclude_ids: Iterable[int] = ()
    ) -> list[Demonstration]:
        """The demonstrations for a query embedding, never one of ``exclude_ids``."""
        ...


def similar(
    query: np.ndarray,
    k: int,
    strategy: str = "similarity",
    *,
    searcher: Searcher,
    pool: DemoPool,
    exclude_ids: Iterable[int] = (),
    rng: np.random.Generator | int | None = None,
    details: bool = True,
) -> list[Demonstration]:
    """The demonstrations for one query.

    Args:
        query: Query embedding, shape (D,), L2-normalised.
        k: How many demonstrations (fewer when the pool is smaller).
        strategy: ``similarity``: the K most similar pool images (cosine), most similar first.
            ``random``: K pool images drawn uniformly without replacement (the paper's baseline),
            in the drawn order, with their similarity still reported.
        searcher: Holds the vectors; its allowed set must be the pool (see ``Searcher.set_allowed``).
        pool: Current labels; results outside it are dropped.
        exclude_ids: Never return these (e.g. the query image itself when it is in the library).
        rng: Seed or generator for ``random`` (None: fresh entropy).
        details: Look up the demonstrations' label source and synthetic flag. False: the
            caller reads their records itself (the window, together with storing its prediction).

    Returns:
        Demonstrations, at most ``k``.

    Raises:
        ConfigError: Unknown strategy or k < 1.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if k < 1:
        raise ConfigError(f"k must be at least 1, not {k}")
    exclude: Collection[int] = frozenset(int(i) for i in exclude_ids)
    if strategy == "similarity":
        ids, sims = searcher.search(query, k, exclude=exclude)
        picked = [(int(i), float(s)) for i, s in zip(ids, sims, strict=True) if int(i) in pool.labels]
    else:
        candidates = pool.ids
        if exclude:
            candidates = candidates[~np.isin(candidates, np.fromiter(exclude, np.int64))]
        # Only images whose vectors are known can be scored; the rest are not yet embedded.
        candidates = candidates[searcher.known(candidates)]
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        drawn: np.ndarray | list[int] = generator.choice(candidates, size=min(k, len(candidates)), replace=False) if len(candidates) else []
        chosen = [int(i) for i in drawn]
        sims = searcher.similarity(query, chosen)
        picked = list(zip(chosen, sims.tolist(), strict=True))
    info = pool.details([i for i, _ in picked]) if details and pool.details is not None else {}
    return [
        Demonstration(
            image_id=i,
            label=pool.labels[i],
            similarity=float(s),
            source=info.get(i, ("", False))[0],
            synthetic=bool(info.get(i, ("", False))[1]),
        )
        for i, s in picked
    ]
