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

``K = "auto"``: the K in 2..min(8, C-1) whose k-means clustering has the highest silhouette score,
measured with cosine distance between the columns (``AUTO_METRIC``). Euclidean silhouette, k-means'
own metric, is swayed by the large diagonal entries: on a synthetic generalist with three confusable
blocks (tests/test_specialists.py) it prefers K = 2, cosine finds the 3 blocks; on digits both pick K = 2.
Checked on Fashion-MNIST (a width-32 cnn at 91.3% val, T = 4): cosine picks K = 3, {T-shirt, trouser,
pullover, dress, coat, shirt} {sandal, sneaker, ankle boot} {bag}; Euclidean picks K = 5, which splits
the footwear into {sandal} and {sneaker, ankle boot}, so no specialist sees sandal-vs-sneaker. Several K at once (e.g. ``(3, 5)``) take the union of those
clusterings, duplicates removed, which gives overlapping specialists as the paper's JFT ones were.
A cluster of one class gets no specialist.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from edgekd.errors import ConfigError

DEFAULT_CLUSTER_TEMPERATURE = 4.0
AUTO_MAX_K = 8
AUTO_METRIC = "cosine"


@dataclass(frozen=True)
class Clustering:
    covariance: np.ndarray = None                 # (C, C)
    clusters: tuple = ()                          # every cluster found, each a sorted tuple of class indices
    specialist_clusters: tuple = ()               # those with more than one class (one specialist each)
    k: tuple = ()                                 # the K used
    temperature: float = DEFAULT_CLUSTER_TEMPERATURE
    silhouette: dict = None                       # K -> score, when K was chosen automatically

    def to_dict(self, classes=None) -> dict:
        name = (lambda c: classes[c]) if classes is not None else str
        return {"temperature": self.temperature, "k": list(self.k),
                "silhouette": {str(k): v for k, v in (self.silhouette or {}).items()},
                "clusters": [list(s) for s in self.clusters],
                "specialist_clusters": [list(s) for s in self.specialist_clusters],
                "cluster_names": [[name(c) for c in s] for s in self.clusters],
                "covariance": self.covariance.tolist()}


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
    """``None`` (auto) or a tuple of K, each in [2, C]."""
    if num_classes < 3:
        raise ConfigError(f"Specialists need at least 3 classes (a cluster, and other classes for its dustbin). "
                          f"Got {num_classes} instead.")
    if k is None:
        return None
    ks = (k,) if isinstance(k, int) else tuple(k)
    for value in ks:
        if not isinstance(value, int) or value < 2 or value > num_classes:
            raise ConfigError(f"The 'clusters' parameter must be 'auto' or a number of clusters in [2, {num_classes}] "
                              f"(the number of classes). Got {value!r} instead.")
    return ks


def class_covariance(probabilities: np.ndarray) -> np.ndarray:
    """The (C, C) covariance of the columns of (N, C) probability vectors."""
    return np.cov(np.asarray(probabilities, dtype=np.float64), rowvar=False)


def kmeans_labels(covariance: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means labels of the covariance matrix's columns (each class is one point)."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(np.asarray(covariance).T)


def choose_k(covariance: np.ndarray, seed: int = 0, max_k: int = AUTO_MAX_K, metric: str = AUTO_METRIC) -> tuple[int, dict]:
    """The K in 2..min(max_k, C-1) with the highest silhouette score (``metric``), and every score."""
    from sklearn.metrics import silhouette_score

    points = np.asarray(covariance).T
    scores = {}
    for k in range(2, min(max_k, len(points) - 1) + 1):
        labels = kmeans_labels(covariance, k, seed)
        scores[k] = float(silhouette_score(points, labels, metric=metric)) if len(set(labels)) > 1 else -1.0
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


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
    if not temperature > 0:
        raise ConfigError(f"The 'cluster_temperature' parameter must be > 0. Got {temperature!r} instead.")
    probabilities = torch.softmax(generalist_logits.double() / temperature, dim=-1).numpy()
    covariance = class_covariance(probabilities)
    silhouette = None
    if ks is None:
        best, silhouette = choose_k(covariance, seed)
        ks = (best,)
    clusters: list = []
    for value in ks:
        for cluster in labels_to_clusters(kmeans_labels(covariance, value, seed)):
            if cluster not in clusters:
                clusters.append(cluster)
    special = tuple(c for c in clusters if 1 < len(c) < num_classes)
    return Clustering(covariance=covariance, clusters=tuple(clusters), specialist_clusters=special, k=ks,
                      temperature=float(temperature), silhouette=silhouette)


def covariance_png(covariance: np.ndarray, clusters, classes) -> bytes:
    """A heatmap of the covariance, classes reordered by cluster, each cluster outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

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
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
