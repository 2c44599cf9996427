"""Confusion clustering (paper section 5.3): which classes does the generalist confuse?

1. The generalist's predicted probability vectors on the train split, ``P = softmax(z / T)`` (N, C).
   True labels are not used.
2. Their class-by-class covariance ``Sigma = cov(P)`` (C, C): classes the generalist tends to predict
   together covary.
3. k-means (scikit-learn, ``n_init=10``, seeded) on the columns of Sigma: class j is the point
   ``Sigma[:, j]`` in R^C; classes in one cluster form one specialist's special subset.

The clustering temperature T (``DEFAULT_CLUSTER_TEMPERATURE = 4``) is a deviation from the paper,
which used the generalist's probabilities as they are (T = 1). Its generalist was unsure (25% top-1
over 15,000 classes) so its covariance carried the structure; a confident 10-class generalist's does
not: on Fashion-MNIST at T = 1 the diagonal dominates and k-means returns one big cluster and three
singletons, while T = 4 (and 6, 10) recovers tops / footwear / trouser / bag (docs/findings.md). Pass
``temperature=1`` for the paper's exact recipe.

``K = "auto"``: the K in 2..``auto_max_k(C)`` = min(C-1, max(8, ceil(2 sqrt C))) (8 up to 16 classes,
20 at 100, 64 at 1,000, 200 at 10,000) whose k-means clustering has the highest silhouette score,
measured with cosine distance between the columns (``AUTO_METRIC``). Up to 16 candidates every K is
tried; beyond, a zooming search: 9 K spaced geometrically over the range, then 9 spaced evenly
between the best one's neighbours, and so on until every K between them has been tried (about 25
k-means runs for 2..64 instead of 63). Euclidean silhouette, k-means'
own metric, is swayed by the large diagonal entries: on a synthetic generalist with three confusable
blocks (tests/test_specialists.py) it prefers K = 2, cosine finds the 3 blocks; on digits both pick K = 2.
Checked on Fashion-MNIST (a width-32 cnn at 91.3% val, T = 4): cosine picks K = 3, {T-shirt, trouser,
pullover, dress, coat, shirt} {sandal, sneaker, ankle boot} {bag}; Euclidean picks K = 5, which splits
the footwear into {sandal} and {sneaker, ankle boot}, so no specialist sees sandal-vs-sneaker. Several K at once (e.g. ``(3, 5)``) take the union of those
clusterings, duplicates removed, which gives overlapping specialists as the paper's JFT ones were.
A cluster of one class gets no specialist.

Scale. The covariance is accumulated from the logits in chunks of rows (``logit_covariance``), so
memory is O(C^2 + chunk x C), not the (N, C) float64 probabilities and their centred copy (1.4 GB for
90,000 examples x 1,000 classes). Above ``PROJECT_ABOVE`` classes k-means and the silhouette run on
the columns expressed in the covariance's top r eigenvectors, ``V_r diag(lambda_r)`` (C, r), with
r = max(128, 2 max K): the best rank-r picture of the columns, exact (an isometry) when r reaches
the covariance's rank, found by randomized SVD in O(C^2 r). Artifacts keep the covariance as
``covariance.npy`` (float32, read without pickle) and draw it by cluster beyond ``HEATMAP_MAX_CLASSES``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch

from edgekd.errors import ConfigError
from edgekd.validation import check_positive
from specialists.config import DEFAULT_CLUSTER_TEMPERATURE

AUTO_MIN_MAX_K = 8                  # auto tries at least K = 2..8 (fewer with fewer classes)
AUTO_METRIC = "cosine"
AUTO_FULL_SEARCH = 16               # up to this many candidate K, every one is tried
PROJECT_ABOVE = 256                 # classes beyond which k-means runs on the top eigen-directions
PROJECTED_DIMS = 128
HEATMAP_MAX_CLASSES = 60            # beyond, the heatmap shows clusters, not classes
COVARIANCE_CHUNK = 4096


@dataclass(frozen=True)
class Clustering:
    covariance: np.ndarray = None                 # (C, C)
    clusters: tuple = ()                          # every cluster found, each a sorted tuple of class indices
    specialist_clusters: tuple = ()               # those with more than one class (one specialist each)
    k: tuple = ()                                 # the K used
    temperature: float = DEFAULT_CLUSTER_TEMPERATURE
    silhouette: dict = None                       # K -> score, when K was chosen automatically

    def to_dict(self, classes=None) -> dict:
        """The clusters as JSON-ready data; the (C, C) covariance is not in it (``covariance_npy``)."""
        name = (lambda c: classes[c]) if classes is not None else str
        return {"temperature": self.temperature, "k": list(self.k),
                "silhouette": {str(k): v for k, v in (self.silhouette or {}).items()},
                "clusters": [list(s) for s in self.clusters],
                "specialist_clusters": [list(s) for s in self.specialist_clusters],
                "cluster_names": [[name(c) for c in s] for s in self.clusters]}


def parse_clusters(value) -> tuple[int, ...] | None:
    """``--clusters``: ``'auto'`` (None), a number of clusters, or several separated by commas (merged)."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        ks = tuple(int(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        ks = ()
    if not ks:
        raise ConfigError(f"The 'clusters' parameter must be 'auto', a number of clusters, or several separated by "
                          f"commas (their clusterings are merged). Got {value!r} instead.")
    return ks


def check_k(k, num_classes: int) -> tuple[int, ...] | None:
    """``None`` (auto) or a tuple of K, each in [2, C - 1]: with as many clusters as classes every cluster
    holds one class, and a specialist needs two (refused here, before the generalist's logits are computed)."""
    if num_classes < 3:
        raise ConfigError(f"Specialists need at least 3 classes (a cluster, and other classes for its dustbin). "
                          f"Got {num_classes} instead.")
    if k is None:
        return None
    ks = (k,) if isinstance(k, int) else tuple(k)
    for value in ks:
        if not isinstance(value, int) or value < 2 or value > num_classes - 1:
            raise ConfigError(f"The 'clusters' parameter must be 'auto' or a number of clusters in [2, {num_classes - 1}] "
                              f"(fewer than the {num_classes} classes: a specialist needs a cluster of two). "
                              f"Got {value!r} instead.")
    return ks


def class_covariance(probabilities: np.ndarray) -> np.ndarray:
    """The (C, C) covariance of the columns of (N, C) probability vectors."""
    return np.cov(np.asarray(probabilities, dtype=np.float64), rowvar=False)


def logit_covariance(logits: torch.Tensor, temperature: float, chunk: int = COVARIANCE_CHUNK) -> np.ndarray:
    """``class_covariance(softmax(logits / T))`` accumulated over chunks of rows in float64:

        Sigma = (sum_n p_n p_n^T - N pbar pbar^T) / (N - 1),

    with the sum shifted by the first chunk's mean for accuracy, so only one chunk of probabilities
    exists at a time."""
    n, c = logits.shape
    if n < 2:
        raise ConfigError(f"Clustering needs the generalist's outputs on at least 2 examples. Got {n} instead.")
    shift = None
    gram = torch.zeros((c, c), dtype=torch.float64)
    total = torch.zeros(c, dtype=torch.float64)
    for start in range(0, n, chunk):
        p = torch.softmax(logits[start:start + chunk].cpu().double() / temperature, dim=-1)   # host buffers
        if shift is None:
            shift = p.mean(0)
        p -= shift
        gram.addmm_(p.T, p)
        total += p.sum(0)
    mean = total / n
    gram -= n * torch.outer(mean, mean)
    return (gram / (n - 1)).numpy()


def auto_max_k(num_classes: int) -> int:
    """The largest K ``--clusters auto`` tries: min(C-1, max(8, ceil(2 sqrt C)))."""
    return min(num_classes - 1, max(AUTO_MIN_MAX_K, math.ceil(2 * math.sqrt(num_classes))))


def cluster_points(covariance: np.ndarray, max_k: int, seed: int = 0) -> np.ndarray:
    """The points k-means clusters, one row per class: the covariance's columns, or beyond
    ``PROJECT_ABOVE`` classes their coordinates in the top r = max(128, 2 max_k) eigen-directions."""
    covariance = np.asarray(covariance, dtype=np.float64)
    rank = max(PROJECTED_DIMS, 2 * max_k)
    if len(covariance) <= max(PROJECT_ABOVE, rank):
        return covariance.T
    from sklearn.utils.extmath import randomized_svd

    u, s, _ = randomized_svd(covariance, rank, random_state=seed)   # symmetric PSD: u = eigenvectors
    return u * s


def kmeans_labels(covariance: np.ndarray, k: int, seed: int = 0, points: np.ndarray | None = None) -> np.ndarray:
    """k-means labels of the covariance matrix's columns (each class is one point); ``points`` from
    ``cluster_points`` when given."""
    from sklearn.cluster import KMeans

    points = np.asarray(covariance).T if points is None else points
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():   # fewer distinct points than k: said by the caller in edgekd's words
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(points)


def _candidates(low: int, high: int, geometric: bool) -> list[int]:
    count = 9
    if high - low + 1 <= count:
        return list(range(low, high + 1))
    grid = np.geomspace(low, high, count) if geometric else np.linspace(low, high, count)
    return sorted(set(int(round(v)) for v in grid))


def choose_k(covariance: np.ndarray, seed: int = 0, max_k: int | None = None, metric: str = AUTO_METRIC,
             points: np.ndarray | None = None) -> tuple[int, dict]:
    """The K in 2..min(max_k, C-1) with the highest silhouette score (``metric``), and the score of
    every K tried (all of them up to ``AUTO_FULL_SEARCH`` candidates, else a zooming search; see the
    module docstring). ``max_k`` None: ``auto_max_k(C)``."""
    from sklearn.metrics import silhouette_score

    num_classes = len(covariance)
    max_k = min(auto_max_k(num_classes) if max_k is None else max_k, num_classes - 1)
    points = cluster_points(covariance, max_k, seed) if points is None else points
    scores: dict = {}

    def score(k):
        if k not in scores:
            labels = kmeans_labels(covariance, k, seed, points)
            scores[k] = float(silhouette_score(points, labels, metric=metric)) if len(set(labels)) > 1 else -1.0
        return scores[k]

    best_of = lambda ks: max(ks, key=lambda k: (score(k), -k))  # noqa: E731
    if max_k - 1 <= AUTO_FULL_SEARCH:
        best_of(range(2, max_k + 1))
    else:
        low, high, geometric = 2, max_k, True
        while any(k not in scores for k in range(low, high + 1)):
            grid = _candidates(low, high, geometric)
            best = best_of(grid)
            i = grid.index(best)
            low, high, geometric = grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)], False
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, dict(sorted(scores.items()))


def labels_to_clusters(labels) -> list[tuple[int, ...]]:
    """Cluster labels per class -> clusters as sorted tuples, ordered by their smallest class."""
    groups: dict = {}
    for cls, label in enumerate(labels):
        groups.setdefault(int(label), []).append(cls)
    return sorted((tuple(g) for g in groups.values()), key=lambda g: g[0])


def find_clusters(generalist_logits: torch.Tensor, k=None, *, temperature: float = DEFAULT_CLUSTER_TEMPERATURE,
                  seed: int = 0) -> Clustering:
    """Cluster the classes from the generalist's train-split logits (N, C); ``k`` None = auto."""
    num_classes = generalist_logits.shape[1]
    ks = check_k(k, num_classes)
    check_positive("cluster_temperature", temperature)   # finite too, as SpecialistConfig checks it
    covariance = logit_covariance(generalist_logits, temperature)
    silhouette = None
    points = cluster_points(covariance, auto_max_k(num_classes) if ks is None else max(ks), seed)
    if ks is None:
        best, silhouette = choose_k(covariance, seed, points=points)
        ks = (best,)
    clusters: list = []
    for value in ks:
        for cluster in labels_to_clusters(kmeans_labels(covariance, value, seed, points)):
            if cluster not in clusters:
                clusters.append(cluster)
    special = tuple(c for c in clusters if 1 < len(c) < num_classes)
    return Clustering(covariance=covariance, clusters=tuple(clusters), specialist_clusters=special, k=ks,
                      temperature=float(temperature), silhouette=silhouette)


def covariance_npy(covariance: np.ndarray) -> bytes:
    """The covariance as ``.npy`` bytes (float32; ``numpy.load(..., allow_pickle=False)`` reads it)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(covariance, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def read_covariance(npy_path, clusters_json: dict | None = None) -> np.ndarray:
    """The covariance of an artifact: ``covariance.npy`` if it exists, else the ``covariance`` list of
    an older artifact's ``clusters.json``."""
    from pathlib import Path

    from edgekd.errors import ArtifactError

    npy_path = Path(npy_path)
    if npy_path.is_file():
        try:
            return np.load(npy_path, allow_pickle=False).astype(np.float64)
        except ValueError as exc:
            raise ArtifactError(f"'{npy_path}' is not a numeric .npy array ({exc}); rebuild with 'edgekd specialists build'.") from None
    if clusters_json and "covariance" in clusters_json:
        return np.array(clusters_json["covariance"], dtype=np.float64)
    raise ArtifactError(f"'{npy_path.parent}' has neither covariance.npy nor a covariance in clusters.json; "
                        f"rebuild it with 'edgekd specialists build'.")


def cluster_covariance(covariance: np.ndarray, clusters) -> np.ndarray:
    """(n, n): the mean covariance between the classes of cluster a and those of cluster b."""
    weights = np.zeros((len(clusters), len(covariance)))
    for i, cluster in enumerate(clusters):
        weights[i, list(cluster)] = 1.0 / len(cluster)
    return weights @ np.asarray(covariance, dtype=np.float64) @ weights.T


def covariance_png(covariance: np.ndarray, clusters, classes) -> bytes:
    """A heatmap of the covariance, classes reordered by cluster, each cluster outlined; beyond
    ``HEATMAP_MAX_CLASSES`` classes, of the mean covariance between clusters (a fixed-size figure:
    a class-by-class one would be 0.45 inch per class, 49,500 pixels wide at 1,000 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if len(classes) > HEATMAP_MAX_CLASSES:
        return _cluster_heatmap(covariance, clusters, len(classes), plt)
    order = list(dict.fromkeys([c for cluster in clusters for c in cluster] + list(range(len(classes)))))
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(classes), 1.0 + 0.45 * len(classes)), dpi=110)
    image = ax.imshow(covariance[np.ix_(order, order)], cmap="viridis")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(order)), [classes[c] for c in order], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(order)), [classes[c] for c in order], fontsize=8)
    colours = plt.cm.tab10.colors
    for i, cluster in enumerate(clusters):
        positions = sorted(order.index(c) for c in cluster)
        if positions == list(range(positions[0], positions[-1] + 1)):   # contiguous (always, for one K)
            ax.add_patch(Rectangle((positions[0] - 0.5, positions[0] - 0.5), len(positions), len(positions),
                                   fill=False, edgecolor=colours[i % 10], linewidth=2.2))
        else:
            for p in positions:
                ax.add_patch(Rectangle((p - 0.5, p - 0.5), 1, 1, fill=False, edgecolor=colours[i % 10], linewidth=1.5))
    ax.set_title("class covariance of the generalist's probabilities\n(clusters outlined)", fontsize=9)
    return _png(fig, plt)


def _cluster_heatmap(covariance, clusters, num_classes: int, plt) -> bytes:
    matrix = cluster_covariance(covariance, clusters)
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    image = ax.imshow(matrix, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("cluster")
    ax.set_ylabel("cluster")
    ax.set_title(f"mean covariance between clusters ({num_classes} classes, {len(clusters)} clusters)\n"
                 f"of the generalist's probabilities", fontsize=9)
    return _png(fig, plt)


def _png(fig, plt) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
