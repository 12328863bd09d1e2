"""Retrieval and semantic-similarity metrics for embedding models.

:func:`retrieval_metrics` ranks a corpus for every query by embedding similarity and reports
recall@k, MRR (Voorhees, 1999, "The TREC-8 Question Answering Track Report") and nDCG@k with
binary relevance (Jarvelin & Kekalainen, 2002, "Cumulated gain-based evaluation of IR
techniques"). :func:`spearman` is the rank correlation used for STS benchmarks (Reimers &
Gurevych, 2019, "Sentence-BERT", sec. 4.1).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import torch
from torch import Tensor

from tunelab.tasks.contrastive_losses import similarity_matrix

__all__ = ["retrieval_means", "retrieval_metrics", "retrieval_rows", "spearman"]


@torch.no_grad()
def retrieval_metrics(queries: Tensor, corpus: Tensor, relevant: Sequence[Collection[int]], *,
                      ks: Sequence[int] = (1, 5, 10), ndcg_k: int = 10,
                      exclude: Sequence[int | None] | None = None, similarity: str = "cosine",
                      chunk: int = 1024) -> dict[str, float]:
    """Rank ``corpus`` ``[D, d]`` for each of ``queries`` ``[Q, d]`` and score the rankings.

    ``relevant[i]`` holds the corpus indices relevant to query ``i``; ``exclude[i]`` is a corpus
    index query ``i`` may not retrieve (typically the query itself, when queries and corpus are
    the same labelled rows) or ``None``. An excluded index is dropped from the ranking and, if
    listed, from ``relevant[i]`` too. Queries whose relevant set is (then) empty are skipped and
    not counted.

    Ranking: by descending similarity (``similarity_matrix`` of the same ``similarity`` kind);
    equal scores are broken by the lower corpus index first, so the result is deterministic.
    Queries are scored in chunks of ``chunk`` rows, so memory is ``O(chunk * D)``.

    Returns (every metric averaged over the counted queries, NaN if none is counted):

    * ``recall_at_{k}`` for each ``k`` in ``ks`` -- the fraction of the relevant documents found
      in the top ``k`` (with one relevant document this is hit@k);
    * ``mrr`` -- ``1 / rank`` of the first relevant document in the full ranking (no cut-off);
    * ``ndcg_at_{ndcg_k}`` -- ``DCG@k / IDCG@k`` with binary gains, ``DCG = sum 1 / log2(rank + 1)``
      over relevant documents ranked within ``k``, ``IDCG`` the same over ranks
      ``1..min(|relevant|, k)``;
    * ``queries`` -- the number of queries counted (an ``int``).
    """
    return retrieval_means(retrieval_rows(queries, corpus, relevant, ks=ks, ndcg_k=ndcg_k, exclude=exclude,
                                          similarity=similarity, chunk=chunk))


def retrieval_means(rows: dict[str, list[float]]) -> dict[str, float]:
    """:func:`retrieval_metrics` from :func:`retrieval_rows`: each metric's mean, and ``queries``."""
    counted = len(next(iter(rows.values()), []))
    out: dict[str, float] = {name: _total(values) / counted if counted else float("nan")
                             for name, values in rows.items()}
    out["queries"] = counted
    return out


def _total(values: Sequence[float]) -> float:
    """Left-to-right float sum (``sum()`` compensates from Python 3.12 on; this keeps one result everywhere)."""
    total = 0.0
    for value in values:
        total += value
    return total


@torch.no_grad()
def retrieval_rows(queries: Tensor, corpus: Tensor, relevant: Sequence[Collection[int]], *,
                   ks: Sequence[int] = (1, 5, 10), ndcg_k: int = 10,
                   exclude: Sequence[int | None] | None = None, similarity: str = "cosine",
                   chunk: int = 1024) -> dict[str, list[float]]:
    """The metrics of :func:`retrieval_metrics` query by query: ``recall_at_{k}``, ``mrr`` and
    ``ndcg_at_{ndcg_k}``, one value per counted query (in query order; skipped queries have none)."""
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"expected queries [Q, d] and corpus [D, d]; got {tuple(queries.shape)} "
                         f"and {tuple(corpus.shape)}")
    n_queries, n_docs = queries.shape[0], corpus.shape[0]
    if len(relevant) != n_queries:
        raise ValueError(f"relevant has {len(relevant)} entries for {n_queries} queries")
    if exclude is not None and len(exclude) != n_queries:
        raise ValueError(f"exclude has {len(exclude)} entries for {n_queries} queries")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks) or ndcg_k < 1:
        raise ValueError(f"cut-offs must be >= 1; got ks={ks}, ndcg_k={ndcg_k}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")

    rel_sets: list[set[int]] = []
    for i, rel in enumerate(relevant):
        docs = {int(r) for r in rel}
        if any(r < 0 or r >= n_docs for r in docs):
            raise IndexError(f"relevant[{i}] = {sorted(docs)} is out of range for a corpus of {n_docs}")
        if exclude is not None and exclude[i] is not None:
            if not 0 <= int(exclude[i]) < n_docs:
                raise IndexError(f"exclude[{i}] = {exclude[i]} is out of range for a corpus of {n_docs}")
            docs.discard(int(exclude[i]))
        rel_sets.append(docs)

    recalls: dict[int, list[float]] = {k: [] for k in ks}
    mrrs: list[float] = []
    ndcgs: list[float] = []
    positions = torch.arange(n_docs, device=corpus.device)
    for start in range(0, n_queries, chunk):
        stop = min(start + chunk, n_queries)
        rows = [i for i in range(start, stop) if rel_sets[i]]
        if not rows:
            continue
        scores = similarity_matrix(queries[rows], corpus, similarity)  # [c, D]
        excluded = [(r, int(exclude[i])) for r, i in enumerate(rows)
                    if exclude is not None and exclude[i] is not None]
        if excluded:
            er, ed = zip(*excluded)
            scores[list(er), list(ed)] = float("-inf")
        # A stable ascending sort of the negated scores: ties keep index order (lower index first),
        # and the excluded -inf scores go last.
        order = torch.sort(-scores, dim=1, stable=True).indices
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, positions.expand_as(order).contiguous())  # 0-based rank of each doc
        pair_rows = [r for r, i in enumerate(rows) for _ in rel_sets[i]]
        pair_docs = [d for i in rows for d in sorted(rel_sets[i])]
        rel_ranks = (ranks[pair_rows, pair_docs] + 1).tolist()  # 1-based, for the relevant docs only
        cursor = 0
        for i in rows:
            n_rel = len(rel_sets[i])
            found = rel_ranks[cursor:cursor + n_rel]
            cursor += n_rel
            for k in ks:
                recalls[k].append(sum(rank <= k for rank in found) / n_rel)
            mrrs.append(1.0 / min(found))
            dcg = sum(1.0 / math.log2(rank + 1) for rank in found if rank <= ndcg_k)
            idcg = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(n_rel, ndcg_k) + 1))
            ndcgs.append(dcg / idcg)

    out: dict[str, list[float]] = {f"recall_at_{k}": recalls[k] for k in ks}
    out["mrr"] = mrrs
    out[f"ndcg_at_{ndcg_k}"] = ndcgs
    return out

def spearman(predicted: Sequence[float], gold: Sequence[float]) -> float:
    """Spearman rank correlation of ``predicted`` with ``gold`` (``scipy.stats.spearmanr``).

    Returns ``float('nan')`` when either side is constant (the correlation is undefined there;
    scipy would warn and return NaN) or has fewer than two values.
    """
    from scipy.stats import spearmanr

    predicted, gold = [float(x) for x in predicted], [float(x) for x in gold]
    if len(predicted) != len(gold):
        raise ValueError(f"predicted has {len(predicted)} values, gold {len(gold)}")
    if len(predicted) < 2 or len(set(predicted)) < 2 or len(set(gold)) < 2:
        return float("nan")
    return float(spearmanr(predicted, gold).statistic)
