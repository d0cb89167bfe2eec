"""Nearest-neighbour search: an Annoy index on disk plus an exact buffer for recent labels."""

from nmid_desktop.index.annoy_index import (
    DEFAULT_N_TREES,
    DEFAULT_SEARCH_K,
    AnnoyIndex,
    IndexMeta,
    StaleIndexError,
    build_index,
    cosine_from_angular,
    index_path,
)
from nmid_desktop.index.buffer import ExactBuffer
from nmid_desktop.index.searcher import Searcher

__all__ = [
    "DEFAULT_N_TREES",
    "DEFAULT_SEARCH_K",
    "AnnoyIndex",
    "ExactBuffer",
    "IndexMeta",
    "Searcher",
    "StaleIndexError",
    "build_index",
    "cosine_from_angular",
    "index_path",
]
