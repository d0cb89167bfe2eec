"""Index options for a million-image library, side by side on the same simulated data.

Usage:
    python benchmarks/million_index.py --n 200000 [--options annoy-1280 annoy-pca128 ...]
    python benchmarks/million_index.py --n 20000 --real-only      # 20k figure on real embeddings only
    python benchmarks/million_index.py --embed /tmp/demo-lib       # Ray (2 CPUs) vs single-process images/s

Data: the real default-encoder embeddings of the NEU library (``--neu``, 1,799 images) and
of the demo library (``--demo``, built with ``nmid demo`` + ``nmid index``). 100 of each
are held out as queries; the rest are the sources. To reach ``--n`` items, copies of the
sources get isotropic Gaussian noise (``--noise``, std per dimension) and are L2-normalised
again; the mean cosine of a copy to its source is printed. With ``--real-only`` the items
are 20,000 real embeddings only if that many exist (else all of them; no copies).

Per option: build time, index files on disk, RSS growth of this process after opening the
index and running the queries (the index's resident memory), time to open, recall@10
against exact 1280-d cosine search, p50/p95 query latency (wall, one thread, embedding
excluded) and the querying thread's CPU-time p95 (on a busy shared machine the wall clock
also counts waiting for a core). Targets at 1M: recall@10 >= 0.95, p95 < 10 ms, index RAM < 2 GB.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmid_desktop.core.jobs import Progress, run_job  # noqa: E402
from nmid_desktop.index.ivf import default_nlist  # noqa: E402

K = 10
_Search = Callable[[np.ndarray], np.ndarray]


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def file_rss_mb() -> float:
    """The file-backed part of the resident set in MB (mapped index files the kernel may drop)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[2]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def real_embeddings(library: Path) -> np.ndarray:
    """All cached embeddings of the library's default encoder, shape (N, 1280)."""
    from nmid_desktop.core.store import open_library
    from nmid_desktop.ml.encoders import DEFAULT_ENCODER, load_encoder

    key = load_encoder(DEFAULT_ENCODER).key
    with open_library(library, create=False) as store:
        _, vectors = store.get_embeddings(key)
    if not len(vectors):
        raise SystemExit(f"{library} has no embeddings for {key}: run `nmid index --library {library}` first")
    return np.asarray(vectors, dtype=np.float32)


def simulate(sources: np.ndarray, n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Sources first, then noisy renormalised copies up to ``n`` rows; also the copies' mean cosine."""
    out = np.empty((n, sources.shape[1]), dtype=np.float32)
    m = min(n, len(sources))
    out[:m] = sources[:m]
    cosines = []
    for start in range(m, n, 50_000):
        stop = min(n, start + 50_000)
        src = sources[np.arange(start, stop) % len(sources)]
        x = src + rng.normal(scale=noise, size=src.shape).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:stop] = x
        cosines.append(np.einsum("ij,ij->i", x, src))
    return out, float(np.concatenate(cosines).mean()) if cosines else 1.0


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Row indices of the exact top-k by cosine, shape (Q, k)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(vectors), 100_000):
        sims = queries @ vectors[start : start + 100_000].T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sims, top, axis=1)
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-cand_s, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, keep, axis=1)
        best_i = np.take_along_axis(cand_i, keep, axis=1)
    return best_i


def dir_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir()) / 1e6


def build_annoy(folder: Path, vectors: np.ndarray) -> Callable[[], tuple[_Search, Callable[[], None]]]:
    from nmid_desktop.index.annoy_index import AnnoyIndex, build_index

    path = folder / "full.ann"
    run_job(build_index(path, np.arange(len(vectors)), vectors, encoder_key="bench", labels_version=0))

    def opener() -> tuple[_Search, Callable[[], None]]:
        index = AnnoyIndex.open(path)
        return (lambda q: index.search(q, K)[0]), index.close

    return opener


def build_reduced(folder: Path, vectors: np.ndarray, dim: int, rerank: int, nodes: int = 50) -> Callable[[], tuple[_Search, Callable[[], None]]]:
    from nmid_desktop.index.reduced import ReducedAnnoyIndex, build_reduced_index

    path = folder / f"pca{dim}.ann"
    if not path.exists():  # one build serves every --rerank value
        run_job(build_reduced_index(path, np.arange(len(vectors)), vectors, encoder_key="bench", labels_version=0,
                                    reduced_dim=dim))

    def opener() -> tuple[_Search, Callable[[], None]]:
        index = ReducedAnnoyIndex.open(path)
        index.rerank = rerank
        index.nodes_per_candidate = nodes
        return (lambda q: index.search(q, K)[0]), index.close

    return opener


def build_faiss(folder: Path, vectors: np.ndarray, spec: str) -> Callable[[], tuple[_Search, Callable[[], None]]]:
    """A faiss index from its factory string (L2 on unit vectors ranks as cosine; PCA keeps L2 distances)."""
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.index_factory(vectors.shape[1], spec, faiss.METRIC_L2)  # L2 = cosine order on unit vectors
    if not index.is_trained:
        rows = np.random.default_rng(0).choice(len(vectors), size=min(len(vectors), 30_000), replace=False)
        index.train(vectors[np.sort(rows)])
    for start in range(0, len(vectors), 50_000):
        index.add(vectors[start : start + 50_000])
    path = folder / "faiss.index"
    faiss.write_index(index, str(path))
    del index

    def opener() -> tuple[_Search, Callable[[], None]]:
        loaded = faiss.read_index(str(path))
        if "IVF" in spec:
            faiss.extract_index_ivf(loaded).nprobe = 32
        if "HNSW" in spec:
            faiss.ParameterSpace().set_index_parameter(loaded, "efSearch", 128)
        return (lambda q: loaded.search(q.reshape(1, -1), K)[1][0]), lambda: None

    return opener


def build_ivf(folder: Path, vectors: np.ndarray, nlist: int, nprobe: int, rerank: int) -> Callable[[], tuple[_Search, Callable[[], None]]]:
    """The app's inverted-file kind (index/ivf.py: faiss IVF, int8 full vectors); one build per nlist."""
    import faiss

    from nmid_desktop.index.ivf import IvfIndex, build_ivf_index

    path = folder / f"ivf{nlist}.ann"
    if not path.exists():  # one build serves every --nprobe value
        run_job(build_ivf_index(path, np.arange(len(vectors)), vectors, encoder_key="bench", labels_version=0, nlist=nlist))

    def opener() -> tuple[_Search, Callable[[], None]]:
        faiss.omp_set_num_threads(1)  # one query, one thread, as in the app's query worker
        index = IvfIndex.open(path)
        index.nprobe = nprobe
        index.rerank = rerank
        return (lambda q: index.search(q, K)[0]), index.close

    return opener


class NumpyIvf:
    """The same inverted file without faiss: exact scan of the centroids, numpy scan of int8 codes.

    Uses the faiss build's centroids and lists (same candidates), its own per-dimension int8
    codes (min/max over the data, as faiss's QT_8bit), stored list by list so a probe is a slice.
    """

    def __init__(self, ivf_path: Path, vectors: np.ndarray, nprobe: int) -> None:
        import faiss

        whole = faiss.read_index(str(ivf_path))  # kept referenced: the IVF view does not own it
        index = faiss.extract_index_ivf(whole)
        self.centroids = index.quantizer.reconstruct_n(0, index.nlist)
        invlists = index.invlists
        sizes = np.array([invlists.list_size(i) for i in range(index.nlist)], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        order = np.concatenate([faiss.rev_swig_ptr(invlists.get_ids(i), int(sizes[i])).copy() for i in range(index.nlist)])
        del index, whole
        lo, hi = vectors.min(axis=0), vectors.max(axis=0)
        self.step = ((hi - lo) / 255).astype(np.float32)
        self.codes = np.empty(vectors.shape, dtype=np.uint8)
        for start in range(0, len(order), 50_000):
            rows = order[start : start + 50_000]
            self.codes[start : start + len(rows)] = np.clip(np.rint((vectors[rows] - lo) / self.step), 0, 255).astype(np.uint8)
        self.order = order
        self.nprobe = nprobe

    def search(self, q: np.ndarray) -> np.ndarray:
        lists = np.argpartition(-(self.centroids @ q), self.nprobe - 1)[: self.nprobe]
        parts = [np.arange(self.starts[i], self.starts[i + 1]) for i in lists]
        rows = np.concatenate(parts)
        scores = self.codes[rows].astype(np.float32) @ (self.step * q)  # q . x up to a constant
        top = np.argpartition(-scores, K - 1)[:K] if len(scores) > K else np.arange(len(scores))
        return self.order[rows[top]]


def measure(name: str, build: Callable[[Path], Callable[[], tuple[_Search, Callable[[], None]]]],
            queries: np.ndarray, truth: np.ndarray, folder: Path | None = None) -> dict[str, float | str]:
    keep = folder is not None
    folder = folder or Path(tempfile.mkdtemp(prefix="nmid-million-"))
    try:
        t0 = time.perf_counter()
        opener = build(folder)
        build_s = time.perf_counter() - t0
        before, file_before = rss_mb(), file_rss_mb()
        t0 = time.perf_counter()
        search, close = opener()
        open_s = time.perf_counter() - t0
        for q in queries[:20]:  # warm-up
            search(q)
        times, cpu, hits = [], [], 0.0
        for q, exact in zip(queries, truth, strict=True):
            t0, c0 = time.perf_counter(), time.thread_time()
            found = search(q)
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            hits += len(set(exact.tolist()) & {int(i) for i in found}) / K
        grown, file_grown = rss_mb() - before, file_rss_mb() - file_before
        close()
        return {"option": name, "build_s": build_s, "disk_mb": dir_mb(folder), "rss_mb": grown, "file_mb": file_grown,
                "open_s": open_s,
                "recall": hits / len(queries), "p50_ms": float(np.percentile(times, 50) * 1e3),
                "p95_ms": float(np.percentile(times, 95) * 1e3), "cpu_p95_ms": float(np.percentile(cpu, 95) * 1e3)}
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


OPTIONS = ("ivf-sq8", "numpy-ivf", "annoy-1280", "annoy-pca128", "annoy-pca256", "faiss-ivfpq", "faiss-hnsw-pca128")


def index_table(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    parts = [real_embeddings(p) for p in (args.neu, args.demo) if p is not None]
    held, sources = [], []
    for vectors in parts:
        order = rng.permutation(len(vectors))
        held.append(vectors[order[: args.queries_per_source]])
        sources.append(vectors[order[args.queries_per_source :]])
    queries = np.concatenate(held)
    src = np.concatenate(sources)
    src = src[rng.permutation(len(src))]
    n = min(args.n, len(src)) if args.real_only else args.n
    vectors, cos = simulate(src, n, args.noise, rng)
    print(f"items {n:,} ({len(src):,} real sources{'' if args.real_only else f', copies with noise std {args.noise} per dim, mean cosine to source {cos:.4f}'}); "
          f"queries {len(queries)} held-out real embeddings; D = {vectors.shape[1]}")
    truth = exact_top(vectors, queries)
    builders = {
        "annoy-1280": lambda f: build_annoy(f, vectors),
        "faiss-ivfpq": lambda f: build_faiss(f, vectors, f"IVF{max(64, int(np.sqrt(n)))},PQ64"),
        "faiss-hnsw-pca128": lambda f: build_faiss(f, vectors, "PCA128,HNSW32"),
    }
    print(f"{'option':<28}{'build s':>9}{'disk MB':>9}{'RSS MB':>8}{'of it file':>11}{'open s':>8}{'recall@10':>10}{'p50 ms':>8}{'p95 ms':>8}{'CPU p95':>9}")
    def show(row: dict) -> None:
        print(f"{row['option']:<28}{row['build_s']:>9.1f}{row['disk_mb']:>9.0f}{row['rss_mb']:>8.0f}{row.get('file_mb', float('nan')):>11.0f}{row['open_s']:>8.2f}"
              f"{row['recall']:>10.4f}{row['p50_ms']:>8.2f}{row['p95_ms']:>8.2f}{row['cpu_p95_ms']:>9.2f}", flush=True)

    for name in args.options:
        if name in ("ivf-sq8", "numpy-ivf"):
            continue
        if not name.startswith("annoy-pca"):
            show(measure(name, builders[name], queries, truth))
            continue
        dim = int(name.removeprefix("annoy-pca"))
        folder = Path(tempfile.mkdtemp(prefix="nmid-million-"))
        try:  # one build, measured at each --rerank value (build_s is the first's)
            for rerank in args.rerank:
                for nodes in args.nodes:
                    show(measure(f"{name} rr{rerank} n{nodes}", lambda f, r=rerank, d=dim, m=nodes: build_reduced(f, vectors, d, r, m),
                                 queries, truth, folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if "ivf-sq8" in args.options or "numpy-ivf" in args.options:
        for nlist in args.nlist or [default_nlist(n)]:
            folder = Path(tempfile.mkdtemp(prefix="nmid-million-"))
            try:  # one build per nlist, measured at each --nprobe (build_s is the first's)
                for nprobe in args.nprobe:
                    for rerank in args.ivf_rerank:
                        if nprobe > nlist:
                            continue
                        row = measure(f"ivf-sq8 L{nlist} p{nprobe} rr{rerank}",
                                      lambda f, a=nlist, b=nprobe, c=rerank: build_ivf(f, vectors, a, b, c), queries, truth, folder)
                        if "ivf-sq8" in args.options:
                            show(row)
                if "numpy-ivf" in args.options:
                    t0 = time.perf_counter()
                    before = rss_mb()
                    numpy_ivf = NumpyIvf(folder / f"ivf{nlist}.ann", vectors, args.nprobe[0])
                    extra = time.perf_counter() - t0
                    for nprobe in args.nprobe:
                        if nprobe <= nlist:
                            numpy_ivf.nprobe = nprobe
                            show(measure(f"numpy-ivf L{nlist} p{nprobe}", lambda f, m=numpy_ivf: (lambda: (m.search, lambda: None)),
                                         queries, truth, folder) | {"build_s": extra, "rss_mb": rss_mb() - before,
                                                                     "disk_mb": numpy_ivf.codes.nbytes / 1e6})
                    del numpy_ivf
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print(f"peak RSS of the benchmark process {peak:.0f} MB (includes the {vectors.nbytes / 1e6:.0f} MB of vectors); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


def embed_figures(args: argparse.Namespace) -> int:
    """Images/s of the embedding job on each engine, each on a fresh copy of the library."""
    from nmid_desktop.core.store import open_library
    from nmid_desktop.ml.encoders import DEFAULT_ENCODER, load_encoder
    from nmid_desktop.workspace.embedding import embed_library

    encoder_name = args.encoder or DEFAULT_ENCODER
    rates = {}
    for engine in args.engines:
        with tempfile.TemporaryDirectory() as tmp:
            lib = Path(tmp) / "lib"
            shutil.copytree(args.embed, lib)
            with open_library(lib, create=False) as store:
                store.drop_embeddings()
                n = store.count_images()
                encoder = load_encoder(encoder_name) if engine == "local" else None
                first: list[tuple[float, int]] = []  # (time, images) when the first batch was stored

                def note(progress: Progress, first: list = first) -> None:
                    if progress.done and not first:
                        first.append((time.perf_counter(), progress.done))

                t0 = time.perf_counter()
                result = run_job(embed_library(store, encoder_name, engine=engine, address=args.address,
                                               num_cpus=args.num_cpus, encoder=encoder), note)
                end = time.perf_counter()
            seconds = end - t0
            rates[engine] = result.embedded / seconds
            steady = (result.embedded - first[0][1]) / (end - first[0][0]) if first and end > first[0][0] else float("nan")
            print(f"{engine:<6} {result.embedded} images in {seconds:.1f} s: {rates[engine]:.1f} images/s overall, "
                  f"{steady:.1f} images/s after the first batch (startup excluded); encoder {encoder_name}, "
                  f"{n} images, num_cpus {args.num_cpus}", flush=True)
    if "local" in rates and "ray" in rates:
        print(f"ray / single-process: {rates['ray'] / rates['local']:.2f}x (target >= 0.8x on the same CPUs)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="items in the simulated library")
    parser.add_argument("--options", nargs="+", choices=OPTIONS, default=list(OPTIONS))
    parser.add_argument("--neu", type=Path, default=Path("/work/neu-lib"))
    parser.add_argument("--demo", type=Path, default=None, help="demo library with embeddings (nmid demo + nmid index)")
    parser.add_argument("--noise", type=float, default=0.01, help="Gaussian noise std per dimension of a copy")
    parser.add_argument("--queries-per-source", type=int, default=100)
    parser.add_argument("--rerank", type=int, nargs="+", default=[100, 400, 1000],
                        help="candidates re-ranked by the PCA options (one build, measured at each)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[50], help="forest nodes inspected per re-rank candidate")
    parser.add_argument("--nlist", type=int, nargs="+", default=None,
                        help="inverted lists of the IVF options (default: the app's, about sqrt(N)); one build each")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64], help="lists probed per query (IVF options)")
    parser.add_argument("--ivf-rerank", type=int, nargs="+", default=[0, 100],
                        help="int8 candidates re-scored with the float16 vectors (IVF option; 0: none)")
    parser.add_argument("--real-only", action="store_true", help="no copies: real embeddings only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed", type=Path, default=None, metavar="LIBRARY", help="measure embedding images/s instead")
    parser.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    parser.add_argument("--encoder", default=None)
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args(argv)
    return embed_figures(args) if args.embed else index_table(args)


if __name__ == "__main__":
    sys.exit(main())
