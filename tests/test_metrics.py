"""Benign retrieval metrics against a plain brute-force reference and hand-computed cases."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from benchmark.errors import BenchmarkError
from benchmark.retrieval_metrics import kmeans_assignments, nmi_score, recall_at_k, retrieval_metrics


def brute_force_metrics(embeddings: np.ndarray, labels: np.ndarray, ks=(1, 2)) -> dict[str, float]:
    """Straightforward reference: full distance matrix, one sorted Python list per query."""
    n = len(labels)
    dist = np.sqrt(((embeddings[:, None, :] - embeddings[None, :, :]) ** 2).sum(-1))
    sums = {f"R@{k}": 0.0 for k in ks} | {"mAP": 0.0, "mAP@R": 0.0, "mAP@10": 0.0}
    counted = 0
    for q in range(n):
        others = [j for j in range(n) if j != q]
        ranking = sorted(others, key=lambda j: (dist[q, j], j))  # ties: smaller index first
        rel = [labels[j] == labels[q] for j in ranking]
        num_rel = sum(rel)
        if num_rel == 0:
            continue
        counted += 1
        for k in ks:
            sums[f"R@{k}"] += float(any(rel[:k]))
        hits, ap, ap_r, ap_10 = 0, 0.0, 0.0, 0.0
        for i, is_rel in enumerate(rel, start=1):
            if is_rel:
                hits += 1
                ap += hits / i
                if i <= num_rel:
                    ap_r += hits / i
                if i <= 10:
                    ap_10 += hits / i
        sums["mAP"] += ap / num_rel
        sums["mAP@R"] += ap_r / num_rel
        sums["mAP@10"] += ap_10 / 10
    return {name: value / counted for name, value in sums.items()}


def random_gallery(seed: int, n: int, dim: int, num_classes: int, singletons: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    # a few classes with exactly one item: those queries have no correct answer
    labels[:singletons] = num_classes + np.arange(singletons)
    x = rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


@pytest.mark.parametrize("seed,n,dim,classes,chunk", [
    (0, 97, 8, 7, 10),
    (1, 150, 4, 12, 64),
    (2, 61, 3, 3, 1024),
    (3, 120, 16, 30, 17),
])
def test_matches_brute_force(seed, n, dim, classes, chunk):
    x, labels = random_gallery(seed, n, dim, classes, singletons=3)
    expected = brute_force_metrics(x, labels, ks=(1, 2, 4))
    got = retrieval_metrics(torch.from_numpy(x), torch.from_numpy(labels), ks=(1, 2, 4),
                            chunk_size=chunk, nmi=False)
    assert set(got) == set(expected)
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name
    recalls = recall_at_k(torch.from_numpy(x), torch.from_numpy(labels), ks=(1, 2, 4), chunk_size=chunk)
    for name, value in recalls.items():
        assert value == pytest.approx(expected[name], abs=1e-12), name


def test_float32_unnormalised_matches_brute_force():
    rng = np.random.default_rng(5)
    x = rng.normal(scale=3.0, size=(80, 6)).astype(np.float32)  # not unit vectors
    labels = rng.integers(0, 5, size=80)
    expected = brute_force_metrics(x.astype(np.float64), labels)
    got = retrieval_metrics(torch.from_numpy(x), torch.from_numpy(labels), chunk_size=33, nmi=False)
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-6), name


def test_chunked_equals_unchunked():
    x, labels = random_gallery(7, 300, 12, 20, singletons=2)
    x_t, y_t = torch.from_numpy(x).float(), torch.from_numpy(labels)
    whole = retrieval_metrics(x_t, y_t, chunk_size=10_000, nmi=False)
    for chunk in (1, 7, 128, 299):
        # equal up to the order of floating-point summation over chunks
        assert retrieval_metrics(x_t, y_t, chunk_size=chunk, nmi=False) == pytest.approx(whole, abs=1e-12)


def one_d(points, labels):
    return torch.tensor(points, dtype=torch.float64)[:, None], torch.tensor(labels)


def test_hand_computed_one_dimensional():
    # positions 0, 1, 3, 6, 10 with labels a a b a b
    x, y = one_d([0.0, 1.0, 3.0, 6.0, 10.0], [0, 0, 1, 0, 1])
    got = retrieval_metrics(x, y, ks=(1, 2), nmi=False)
    # Rankings by position (self removed; the tie at distance 3 for q=3 goes to the smaller index):
    # q=0 (a): 1a 3b 6a 10b -> rel 1 0 1 0, R=2: AP=(1/1+2/3)/2, AP@R=(1/1)/2, AP@10=(1+2/3)/10
    # q=1 (a): 0a 3b 6a 10b -> same as q=0
    # q=3 (b): 1a 0a 6a 10b -> rel 0 0 0 1, R=1: AP=1/4, AP@R=0, AP@10=(1/4)/10
    # q=6 (a): 3b 10b 1a 0a -> rel 0 0 1 1, R=2: AP=(1/3+2/4)/2, AP@R=0, AP@10=(1/3+2/4)/10
    # q=10 (b): 6a 3b 1a 0a -> rel 0 1 0 0, R=1: AP=1/2, AP@R=0, AP@10=(1/2)/10
    assert got["R@1"] == pytest.approx(2 / 5)
    assert got["R@2"] == pytest.approx(3 / 5)
    assert got["mAP"] == pytest.approx((5 / 6 + 5 / 6 + 1 / 4 + 5 / 12 + 1 / 2) / 5)
    assert got["mAP@R"] == pytest.approx((1 / 2 + 1 / 2 + 0 + 0 + 0) / 5)
    ap10 = [(1 + 2 / 3) / 10, (1 + 2 / 3) / 10, 0.25 / 10, (1 / 3 + 1 / 2) / 10, 0.5 / 10]
    assert got["mAP@10"] == pytest.approx(sum(ap10) / 5)


def test_perfect_retrieval_and_singleton_exclusion():
    # two tight, distant clusters and one lone item of a third class
    x, y = one_d([0.0, 0.1, 0.2, 10.0, 10.1, 50.0], [0, 0, 0, 1, 1, 2])
    got = retrieval_metrics(x, y, ks=(1, 2), nmi=False)
    # the lone item (no correct answer) is left out, the other five are perfect
    assert got == {"R@1": 1.0, "R@2": 1.0, "mAP": 1.0, "mAP@R": 1.0, "mAP@10": pytest.approx((3 * 0.2 + 2 * 0.1) / 5)}
    assert recall_at_k(x, y, ks=(1,)) == {"R@1": 1.0}


def test_ties_broken_by_smaller_gallery_index():
    # q=1 at 0: items 0 and 2 both at distance 1; item 0 (other class) ranks first by index
    x, y = one_d([-1.0, 0.0, 1.0], [1, 0, 0])
    got = retrieval_metrics(x, y, ks=(1, 2), nmi=False)
    # q0 (class 1) has no same-class item -> excluded; q1: ranking 0(b) 2(a) -> miss at 1;
    # q2: ranking 1(a) 0(b) -> hit
    assert got["R@1"] == pytest.approx(0.5)
    assert got["R@2"] == pytest.approx(1.0)
    assert got["mAP"] == pytest.approx((1 / 2 + 1) / 2)
    assert recall_at_k(x, y, ks=(1, 2)) == {"R@1": pytest.approx(0.5), "R@2": pytest.approx(1.0)}


def test_self_excluded_by_index_with_duplicates():
    # items 0 and 1 are identical; item 1 is a different class. "Drop the first sorted element"
    # would drop the wrong one for query 1; excluding by index keeps item 0 as its neighbour.
    x, y = one_d([0.0, 0.0, 0.5, 5.0], [0, 1, 0, 1])
    got = retrieval_metrics(x, y, ks=(1,), nmi=False)
    # q0: 1(b, d=0) 2(a) 3(b) -> miss; q1: 0(a, d=0) 2(a) 3(b) -> miss; q2: 0(a) 1(b) 3(b) -> hit;
    # q3: 2(a) 0(a)/1(b) tie at 5 -> 0 before 1 -> 1 is third -> miss
    assert got["R@1"] == pytest.approx(1 / 4)
    assert recall_at_k(x, y, ks=(1,))["R@1"] == pytest.approx(1 / 4)


def separated_clusters(seed: int, num_clusters: int, per_cluster: int, dim: int = 16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_clusters, dim)) * 20.0
    labels = np.repeat(np.arange(num_clusters), per_cluster)
    x = centres[labels] + rng.normal(scale=0.05, size=(len(labels), dim))
    return torch.from_numpy(x), torch.from_numpy(labels)


def test_nmi_separated_clusters_and_random_labels():
    x, labels = separated_clusters(0, 3, 40)
    # restarts guard against a random initialisation that puts two centroids in one cluster
    assert nmi_score(x, labels, restarts=10) == pytest.approx(1.0)
    shuffled = labels[torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))]
    assert nmi_score(x, shuffled, restarts=10) < 0.1
    two_x, two_labels = separated_clusters(1, 2, 50)
    got = retrieval_metrics(two_x, two_labels, seed=0)
    assert got["NMI"] == pytest.approx(1.0)
    assert got["R@1"] == 1.0 and got["mAP"] == pytest.approx(1.0)
    assert retrieval_metrics(x, labels, nmi_restarts=10)["NMI"] == pytest.approx(1.0)


def test_nmi_is_seeded_and_cluster_count_configurable():
    x, labels = random_gallery(11, 300, 8, 6, singletons=0)
    x_t, y_t = torch.from_numpy(x).float(), torch.from_numpy(labels)
    assert nmi_score(x_t, y_t, seed=4) == nmi_score(x_t, y_t, seed=4)
    assignment = kmeans_assignments(x.astype(np.float32), 3, seed=0)
    assert assignment.shape == (300,) and set(np.unique(assignment)) <= {0, 1, 2}
    with pytest.raises(BenchmarkError, match="clusters"):
        nmi_score(x_t, y_t, num_clusters=301)


def test_nmi_falls_back_to_sklearn_without_faiss(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    x, labels = separated_clusters(2, 4, 25, dim=8)
    assert nmi_score(x, labels, restarts=10) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs,match", [
    ({"embeddings": torch.zeros(5), "labels": torch.zeros(5, dtype=torch.long)}, "2-D"),
    ({"embeddings": torch.zeros(5, 2), "labels": torch.zeros(4, dtype=torch.long)}, "one label per"),
    ({"embeddings": torch.zeros(1, 2), "labels": torch.zeros(1, dtype=torch.long)}, "at least 2"),
    ({"embeddings": torch.full((3, 2), float("nan")), "labels": torch.zeros(3, dtype=torch.long)}, "NaN"),
    ({"embeddings": torch.randn(4, 2), "labels": torch.arange(4)}, "no query"),
    ({"embeddings": torch.randn(4, 2), "labels": torch.zeros(4, dtype=torch.long), "ks": (0,)}, "ks"),
    ({"embeddings": torch.randn(4, 2), "labels": torch.zeros(4, dtype=torch.long), "chunk_size": 0}, "chunk_size"),
])
def test_bad_inputs_raise_benchmark_error(kwargs, match):
    embeddings, labels = kwargs.pop("embeddings"), kwargs.pop("labels")
    with pytest.raises(BenchmarkError, match=match):
        retrieval_metrics(embeddings, labels, nmi=False, **kwargs)


@pytest.mark.slow
def test_benchmark_metrics_10k(benchmark):
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(10_000, 512, generator=generator), dim=1)
    labels = torch.randint(0, 100, (10_000,), generator=generator)
    result = benchmark.pedantic(retrieval_metrics, args=(embeddings, labels), kwargs={"nmi": True},
                                rounds=1, iterations=1)
    assert set(result) == {"R@1", "R@2", "mAP", "mAP@R", "mAP@10", "NMI"}
    # random embeddings: retrieval near chance (1 in 100 classes), NMI far from 1
    assert 0.0 <= result["R@1"] < 0.05 and result["R@1"] <= result["R@2"]
    assert 0.0 <= result["NMI"] < 0.3


def test_metrics_survive_embeddings_shrunk_into_a_tiny_cap():
    """Adversarial training can squeeze unit-norm embeddings into a cap of radius 1e-4 (GA: mean
    pairwise distance 5e-4 on digits); the ‖a‖²+‖b‖²−2a·b expansion in float32 then loses every
    distance (it turned a 0.97 R@1 into 0.15). R@1 must match a brute-force float64 count."""
    from benchmark.retrieval_metrics import retrieval_metrics

    torch.manual_seed(0)
    labels = torch.arange(20).repeat_interleave(10)
    points = torch.randn(20, 16)[labels] + 0.3 * torch.randn(200, 16)
    pole = torch.zeros(16)
    pole[0] = 1.0
    shrunk = torch.nn.functional.normalize(pole + 1e-4 * points, dim=1)
    exact = torch.cdist(shrunk.double(), shrunk.double(), compute_mode="donot_use_mm_for_euclid_dist")
    exact.fill_diagonal_(float("inf"))
    brute_r1 = float((labels[exact.argmin(dim=1)] == labels).double().mean())
    assert brute_r1 > 0.8
    float32 = torch.cdist(shrunk, shrunk)  # the old computation: the scenario does break it
    float32.fill_diagonal_(float("inf"))
    assert float((labels[float32.argmin(dim=1)] == labels).double().mean()) < brute_r1 - 0.2
    assert retrieval_metrics(shrunk, labels, nmi=False)["R@1"] == pytest.approx(brute_r1)
