"""Contrastive losses and retrieval metrics against oracles: sentence-transformers' loss classes
(values and gradients on the same fixed embeddings, to 1e-5), plain-python loops and hand-worked
examples, ``sklearn.metrics.ndcg_score`` and ``scipy.stats.spearmanr``."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from tunelab.tasks.contrastive_losses import (
    LOSSES,
    cosent_loss,
    mnrl_loss,
    similarity_matrix,
    supcon_loss,
    symmetric_mnrl_loss,
)
from tunelab.tasks.retrieval import retrieval_metrics, spearman

TOL = 1e-5


# ----------------------------------------------------------------------------- helpers

def _embeddings(*shapes: tuple[int, int], seed: int = 0, dtype=torch.float64) -> list[torch.Tensor]:
    """Random leaf tensors with rows of uneven norm (so cosine and dot really differ)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        x = torch.randn(*shape, generator=g, dtype=dtype) * (0.5 + 2 * torch.rand(shape[0], 1, generator=g,
                                                                                      dtype=dtype))
        out.append(x.requires_grad_(True))
    return out


def _py_cos(u: list[float], v: list[float]) -> float:
    dot = sum(x * y for x, y in zip(u, v))
    return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))


def _py_dot(u: list[float], v: list[float]) -> float:
    return sum(x * y for x, y in zip(u, v))


class _Lookup(nn.Module):
    """A stand-in SentenceTransformer: each feature dict names a column of precomputed embeddings.

    sentence-transformers 6 losses embed with ``embed_columns(model, features)``, which calls
    ``model(features)["sentence_embedding"]`` per column (our dicts have no ``input_ids``, so it
    never tries to merge columns into one batch)."""

    def __init__(self, columns: list[torch.Tensor]) -> None:
        super().__init__()
        self.columns = columns

    def forward(self, features: dict) -> dict[str, torch.Tensor]:
        return {"sentence_embedding": self.columns[features["column"]]}


def _st_loss(cls_name: str, columns: list[torch.Tensor], labels=None, **kwargs) -> torch.Tensor:
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MultipleNegativesSymmetricRankingLoss is deprecated in ST 6
        loss = getattr(st_losses, cls_name)(_Lookup(columns), **kwargs)
    return loss([{"column": i} for i in range(len(columns))], labels)


def _st_sim(kind: str, pairwise: bool = False):
    util = pytest.importorskip("sentence_transformers.util")
    if pairwise:
        return util.pairwise_cos_sim if kind == "cosine" else util.pairwise_dot_score
    return util.cos_sim if kind == "cosine" else util.dot_score


def _assert_same(ours: torch.Tensor, theirs: torch.Tensor, leaves: list[torch.Tensor]) -> None:
    assert torch.isfinite(ours)
    assert abs(ours.item() - theirs.item()) <= TOL, (ours.item(), theirs.item())
    g_ours = torch.autograd.grad(ours, leaves)
    g_theirs = torch.autograd.grad(theirs, leaves)
    for a, b in zip(g_ours, g_theirs):
        assert a.abs().max() > 0  # the comparison is not vacuous
        assert (a - b).abs().max().item() <= TOL


SIM_CASES = [("cosine", 20.0, torch.float64), ("cosine", 20.0, torch.float32), ("dot", 1.0, torch.float64)]


# ----------------------------------------------------------------------------- oracle: sentence-transformers

@pytest.mark.parametrize(("kind", "scale", "dtype"), SIM_CASES)
@pytest.mark.parametrize("k", [0, 2])
def test_mnrl_matches_sentence_transformers(kind, scale, dtype, k):
    batch, dim = 5, 8
    cols = _embeddings(*[(batch, dim)] * (2 + k), seed=k, dtype=dtype)
    negatives = torch.cat(cols[2:]) if k else None  # column by column: all first negatives, then all second
    ours = mnrl_loss(cols[0], cols[1], negatives, scale=scale, similarity=kind)
    theirs = _st_loss("MultipleNegativesRankingLoss", cols, scale=scale, similarity_fct=_st_sim(kind))
    _assert_same(ours, theirs, cols)


@pytest.mark.parametrize(("kind", "scale", "dtype"), SIM_CASES)
@pytest.mark.parametrize("k", [0, 2])
def test_symmetric_mnrl_matches_sentence_transformers(kind, scale, dtype, k):
    batch, dim = 4, 6
    cols = _embeddings(*[(batch, dim)] * (2 + k), seed=10 + k, dtype=dtype)
    negatives = torch.cat(cols[2:]) if k else None
    ours = symmetric_mnrl_loss(cols[0], cols[1], negatives, scale=scale, similarity=kind)
    theirs = _st_loss("MultipleNegativesSymmetricRankingLoss", cols, scale=scale, similarity_fct=_st_sim(kind))
    _assert_same(ours, theirs, cols)


@pytest.mark.parametrize(("kind", "scale", "dtype"), SIM_CASES)
def test_cosent_matches_sentence_transformers(kind, scale, dtype):
    a, b = _embeddings((7, 5), (7, 5), seed=3, dtype=dtype)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.0, 1.0, 0.3], dtype=dtype)  # one tie
    ours = cosent_loss(a, b, scores, scale=scale, similarity=kind)
    theirs = _st_loss("CoSENTLoss", [a, b], scores, scale=scale, similarity_fct=_st_sim(kind, pairwise=True))
    _assert_same(ours, theirs, [a, b])


def test_sentence_transformers_has_no_supcon_class():
    """If a later ST ships one, this fails as a reminder to add it as an oracle for supcon_loss."""
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    assert not [n for n in dir(st_losses) if "supcon" in n.lower() or "supervised" in n.lower()]


# ----------------------------------------------------------------------------- hand-computed values

def test_mnrl_two_by_two_by_hand():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    positives = torch.tensor([[1.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    # cosines: a1.p1 = 1/sqrt2, a1.p2 = 0, a2.p1 = 1/sqrt2, a2.p2 = 1
    for s in (1.0, 2.0, 20.0):
        r = 1 / math.sqrt(2)
        row1 = -math.log(math.exp(s * r) / (math.exp(s * r) + math.exp(0.0)))
        row2 = -math.log(math.exp(s) / (math.exp(s * r) + math.exp(s)))
        assert mnrl_loss(anchors, positives, scale=s).item() == pytest.approx((row1 + row2) / 2, abs=1e-12)
    # dot: a1.p1 = 1, a1.p2 = 0, a2.p1 = 2, a2.p2 = 6
    s = 0.5
    row1 = -math.log(math.exp(s * 1) / (math.exp(s * 1) + math.exp(0.0)))
    row2 = -math.log(math.exp(s * 6) / (math.exp(s * 2) + math.exp(s * 6)))
    assert mnrl_loss(anchors, positives, scale=s, similarity="dot").item() == pytest.approx((row1 + row2) / 2,
                                                                                           abs=1e-12)
    # one hard negative per row, [n_1; n_2]: a1.n1 = 3, a1.n2 = 0, a2.n1 = 0, a2.n2 = -2
    negatives = torch.tensor([[3.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    e = math.exp
    row1 = -math.log(e(s * 1) / (e(s * 1) + e(0.0) + e(s * 3) + e(0.0)))
    row2 = -math.log(e(s * 6) / (e(s * 2) + e(s * 6) + e(0.0) + e(s * -2)))
    got = mnrl_loss(anchors, positives, negatives, scale=s, similarity="dot").item()
    assert got == pytest.approx((row1 + row2) / 2, abs=1e-12)


def test_symmetric_mnrl_is_mean_of_forward_and_backward():
    a, p, n1, n2 = _embeddings((4, 3), (4, 3), (4, 3), (4, 3), seed=5)
    negatives = torch.cat([n1, n2])
    expected = 0.5 * (mnrl_loss(a, p, negatives) + mnrl_loss(p, a))  # backward: positives -> anchors only
    assert symmetric_mnrl_loss(a, p, negatives).item() == pytest.approx(expected.item(), abs=1e-12)
    assert symmetric_mnrl_loss(a, p, negatives).item() != pytest.approx(mnrl_loss(a, p, negatives).item())


def _supcon_loop(x: list[list[float]], labels: list[int], scale: float, sim) -> float:
    n = len(x)
    losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(scale * sim(x[i], x[a])) for a in range(n) if a != i)
        losses.append(-sum(math.log(math.exp(scale * sim(x[i], x[p])) / denom) for p in positives)
                      / len(positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize(("kind", "scale"), [("cosine", 20.0), ("cosine", 3.0), ("dot", 0.7)])
def test_supcon_matches_python_loop(kind, scale):
    (x,) = _embeddings((8, 4), seed=7)
    labels = [0, 1, 0, 2, 1, 0, 3, 2]  # class 3 is a singleton: its anchor has no positive and is skipped
    got = supcon_loss(x, torch.tensor(labels), scale=scale, similarity=kind)
    want = _supcon_loop(x.tolist(), labels, scale, _py_cos if kind == "cosine" else _py_dot)
    assert got.item() == pytest.approx(want, rel=1e-10)
    got.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


def test_supcon_without_positives_is_a_zero_with_grad():
    (x,) = _embeddings((5, 3), seed=8)
    loss = supcon_loss(x, torch.arange(5))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))
    (single,) = _embeddings((1, 3), seed=9)
    assert supcon_loss(single, torch.tensor([4])).item() == 0.0


def test_supcon_single_pair_uses_only_that_pair():
    (x,) = _embeddings((5, 4), seed=11)
    labels = torch.tensor([0, 1, 2, 3, 1])  # only rows 1 and 4 share a label
    sim = 20.0 * similarity_matrix(x, x)
    terms = []
    for i, p in ((1, 4), (4, 1)):
        others = [a for a in range(5) if a != i]
        terms.append(-(sim[i, p] - torch.logsumexp(sim[i, others], dim=0)))
    expected = (terms[0] + terms[1]) / 2
    assert supcon_loss(x, labels).item() == pytest.approx(expected.item(), abs=1e-12)
    # relabelling the unpaired rows (still all distinct) changes nothing
    assert supcon_loss(x, torch.tensor([7, 1, 9, 8, 1])).item() == pytest.approx(expected.item(), abs=1e-12)


def _cosent_loop(a: list[list[float]], b: list[list[float]], scores: list[float], scale: float, sim) -> float:
    s = [scale * sim(u, v) for u, v in zip(a, b)]
    total = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            if scores[i] > scores[j]:
                total += math.exp(s[j] - s[i])
    return math.log(1.0 + total)


@pytest.mark.parametrize(("kind", "scale"), [("cosine", 20.0), ("cosine", 5.0), ("dot", 0.5)])
def test_cosent_matches_python_loop(kind, scale):
    a, b = _embeddings((6, 4), (6, 4), seed=12)
    scores = [0.2, 0.8, 0.8, 0.0, 0.5, 1.0]
    got = cosent_loss(a, b, torch.tensor(scores, dtype=torch.float64), scale=scale, similarity=kind)
    want = _cosent_loop(a.tolist(), b.tolist(), scores, scale, _py_cos if kind == "cosine" else _py_dot)
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_cosent_without_ordered_pairs_is_zero():
    a, b = _embeddings((3, 4), (3, 4), seed=13)
    loss = cosent_loss(a, b, torch.full((3,), 0.5, dtype=torch.float64))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(a.grad, torch.zeros_like(a))


def test_scale_and_similarity_change_the_value():
    a, p = _embeddings((4, 5), (4, 5), seed=14)
    labels = torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([0.1, 0.4, 0.2, 0.9], dtype=torch.float64)
    values = {
        "mnrl": lambda **kw: mnrl_loss(a, p, **kw),
        "symmetric_mnrl": lambda **kw: symmetric_mnrl_loss(a, p, **kw),
        "supcon": lambda **kw: supcon_loss(torch.cat([a, p]), torch.cat([labels, labels]), **kw),
        "cosent": lambda **kw: cosent_loss(a, p, scores, **kw),
    }
    assert set(values) == set(LOSSES)
    for name, fn in values.items():
        base = fn(scale=20.0).item()
        assert fn(scale=5.0).item() != pytest.approx(base, rel=1e-6), name
        assert fn(scale=20.0, similarity="dot").item() != pytest.approx(base, rel=1e-6), name
    # on unit-norm rows cosine and dot agree
    an, pn = (torch.nn.functional.normalize(t.detach(), dim=1) for t in (a, p))
    assert mnrl_loss(an, pn, similarity="dot").item() == pytest.approx(mnrl_loss(an, pn).item(), abs=1e-12)


def test_similarity_matrix():
    a = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-6.0, -8.0]])
    cos = similarity_matrix(a, b)
    assert torch.allclose(cos, torch.tensor([[0.6, 0.8, -1.0], [0.0, 0.0, 0.0]]), atol=1e-6)  # zero row: 0, no NaN
    assert torch.equal(similarity_matrix(a, b, "dot"), a @ b.T)
    with pytest.raises(ValueError, match="unknown similarity"):
        similarity_matrix(a, b, "euclidean")
    with pytest.raises(ValueError):
        mnrl_loss(a, b[:2], similarity="l2")
    with pytest.raises(ValueError, match="negatives"):
        mnrl_loss(a, b[:2], b)  # 3 negative rows for a batch of 2
    assert all(isinstance(v, str) and v for v in LOSSES.values())


# ----------------------------------------------------------------------------- retrieval metrics

def _designed(scores: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries, corpus) whose dot-similarity matrix is exactly ``scores``: one-hot queries."""
    s = torch.tensor(scores, dtype=torch.float64)
    return torch.eye(s.shape[0], dtype=torch.float64), s.T.contiguous()


def test_retrieval_metrics_hand_example():
    queries, corpus = _designed([
        [0.9, 0.1, 0.5, 0.3, 0.2, 0.0, -0.1],  # relevant {2}: rank 2
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],   # relevant {6, 1}: ranks 1 and 6
        [0.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4],   # relevant {0}: rank 7
    ])
    relevant = [{2}, [6, 1], (0,)]
    m = retrieval_metrics(queries, corpus, relevant, similarity="dot")
    assert m["queries"] == 3
    assert m["recall_at_1"] == pytest.approx((0 + 0.5 + 0) / 3)
    assert m["recall_at_5"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["recall_at_10"] == pytest.approx((1 + 1 + 1) / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 7) / 3)
    l2 = math.log2
    ndcg = [1 / l2(3), (1 + 1 / l2(7)) / (1 + 1 / l2(3)), 1 / l2(8)]
    assert m["ndcg_at_10"] == pytest.approx(sum(ndcg) / 3)
    m5 = retrieval_metrics(queries, corpus, relevant, ks=(2,), ndcg_k=5, similarity="dot")
    assert set(m5) == {"recall_at_2", "mrr", "ndcg_at_5", "queries"}
    assert m5["recall_at_2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m5["ndcg_at_5"] == pytest.approx((1 / l2(3) + 1 / (1 + 1 / l2(3)) + 0) / 3)
    assert m5["mrr"] == m["mrr"]  # MRR is never cut off


def test_recall_with_several_relevant_docs_and_skipped_queries():
    queries, corpus = _designed([
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],  # ranking 0..7
        [0.0] * 8,
    ])
    relevant = [{1, 3, 6}, set()]  # ranks 2, 4, 7; the second query has nothing relevant: skipped
    m = retrieval_metrics(queries, corpus, relevant, ks=(1, 2, 5, 7), similarity="dot")
    assert m["queries"] == 1
    assert (m["recall_at_1"], m["recall_at_2"], m["recall_at_5"], m["recall_at_7"]) == pytest.approx(
        (0.0, 1 / 3, 2 / 3, 1.0))
    assert m["mrr"] == pytest.approx(1 / 2)
    l2 = math.log2
    assert m["ndcg_at_10"] == pytest.approx((1 / l2(3) + 1 / l2(5) + 1 / l2(8)) / (1 + 1 / l2(3) + 1 / l2(4)))
    empty = retrieval_metrics(queries, corpus, [set(), set()], similarity="dot")
    assert empty["queries"] == 0 and math.isnan(empty["mrr"])


def test_exclude_removes_self_matches():
    angles = [0.0, 10.0, 90.0, 100.0]  # labels 0, 0, 1, 1
    x = torch.tensor([[math.cos(math.radians(t)), math.sin(math.radians(t))] for t in angles])
    partners = [{1}, {0}, {3}, {2}]
    with_self = retrieval_metrics(x, x, partners, ks=(1, 2))
    assert with_self["recall_at_1"] == 0.0 and with_self["recall_at_2"] == 1.0 and with_self["mrr"] == 0.5
    excluded = retrieval_metrics(x, x, partners, ks=(1, 2), exclude=[0, 1, 2, 3])
    assert excluded["recall_at_1"] == 1.0 and excluded["mrr"] == 1.0 and excluded["ndcg_at_10"] == 1.0
    # listing the query itself as relevant changes nothing once it is excluded
    labelled = [{0, 1}, {0, 1}, {2, 3}, {2, 3}]
    assert retrieval_metrics(x, x, labelled, ks=(1, 2), exclude=[0, 1, 2, 3]) == excluded
    # a row whose only relevant doc is itself is skipped once excluded
    only_self = retrieval_metrics(x, x, [{0}, {0}, {2, 3}, {2, 3}], exclude=[0, None, 2, 3])
    assert only_self["queries"] == 3
    assert only_self["mrr"] == pytest.approx((1 / 2 + 1 + 1) / 3)  # query 1 (no exclusion): doc 1 first


def test_ties_broken_by_lower_index():
    queries, corpus = _designed([[0.5, 0.5, 0.5, 0.1]])
    mrr = {d: retrieval_metrics(queries, corpus, [{d}], similarity="dot")["mrr"] for d in range(4)}
    assert mrr == pytest.approx({0: 1.0, 1: 1 / 2, 2: 1 / 3, 3: 1 / 4})
    assert retrieval_metrics(queries, corpus, [{2}], exclude=[0], similarity="dot")["mrr"] == pytest.approx(1 / 2)
    # exact ties under cosine too: duplicated corpus rows
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    q = torch.tensor([[0.0, 1.0]])
    assert retrieval_metrics(q, c, [{3}], ks=(2, 3))["recall_at_2"] == 0.0
    assert retrieval_metrics(q, c, [{3}], ks=(2, 3))["recall_at_3"] == 1.0


def _random_case(seed: int, n_queries: int = 9, n_docs: int = 40, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(n_queries, dim, generator=g, dtype=torch.float64)
    corpus = torch.randn(n_docs, dim, generator=g, dtype=torch.float64)
    rng = random.Random(seed)
    relevant = [set(rng.sample(range(n_docs), rng.randint(1, 6))) for _ in range(n_queries)]
    return queries, corpus, relevant


@pytest.mark.parametrize("kind", ["cosine", "dot"])
def test_chunking_gives_identical_results(kind):
    queries, corpus, relevant = _random_case(21)
    relevant[4] = set()
    exclude = [i if i % 2 else None for i in range(len(relevant))]
    full = retrieval_metrics(queries, corpus, relevant, exclude=exclude, similarity=kind, chunk=1024)
    assert full["queries"] == len(relevant) - 1
    for chunk in (1, 2, 4):
        assert retrieval_metrics(queries, corpus, relevant, exclude=exclude, similarity=kind, chunk=chunk) == full


def test_metrics_against_sklearn_ndcg_and_brute_force():
    sk_metrics = pytest.importorskip("sklearn.metrics")
    queries, corpus, relevant = _random_case(33)
    scores = similarity_matrix(queries, corpus).numpy()
    assert all(len(set(row.tolist())) == len(row) for row in scores)  # tie-free
    y_true = np.zeros_like(scores)
    for i, rel in enumerate(relevant):
        y_true[i, sorted(rel)] = 1.0
    m = retrieval_metrics(queries, corpus, relevant, ks=(1, 3, 10))
    assert m["ndcg_at_10"] == pytest.approx(sk_metrics.ndcg_score(y_true, scores, k=10), abs=1e-12)
    order = np.argsort(-scores, axis=1)
    for k in (1, 3, 10):
        want = np.mean([len(set(order[i, :k].tolist()) & rel) / len(rel) for i, rel in enumerate(relevant)])
        assert m[f"recall_at_{k}"] == pytest.approx(want, abs=1e-12)
    first = [1 + min(order[i].tolist().index(d) for d in rel) for i, rel in enumerate(relevant)]
    assert m["mrr"] == pytest.approx(np.mean([1 / r for r in first]), abs=1e-12)


def test_spearman_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(4)
    predicted = [rng.random() for _ in range(30)]
    gold = [round(p + rng.gauss(0, 0.3), 1) for p in predicted]  # rounding leaves ties in gold
    assert spearman(predicted, gold) == pytest.approx(stats.spearmanr(predicted, gold).statistic, abs=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
