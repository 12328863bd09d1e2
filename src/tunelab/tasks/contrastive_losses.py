"""Contrastive losses for embedding models, as functions of embedding tensors.

Every function takes plain embedding tensors (float, any device) and returns a scalar loss that
back-propagates into them; nothing here knows about models, tokenizers or config objects. The
similarity ``sim`` between two rows is either the cosine (rows L2-normalised with a small eps,
then a dot product) or the raw dot product; ``scale`` multiplies it before any softmax, so
``scale = 1 / temperature`` (``scale=20`` is ``tau=0.05``).

* ``mnrl`` -- multiple-negatives ranking loss, i.e. InfoNCE with in-batch negatives
  (van den Oord et al., 2018, "Representation Learning with Contrastive Predictive Coding",
  eq. 4; Henderson et al., 2017, "Efficient Natural Language Response Suggestion for Smart
  Reply", sec. 4.4). With anchors ``a_i``, positives ``p_i`` and the candidate pool
  ``C = [p_1..p_B, n_1..n_{Bk}]`` (optional hard negatives appended)::

      L = -1/B sum_i log( exp(s * sim(a_i, p_i)) / sum_{c in C} exp(s * sim(a_i, c)) )

  i.e. cross-entropy over the ``[B, B(1+k)]`` logit matrix with target ``i`` for row ``i``.
  Every other row's positive (and every hard negative) acts as a negative for anchor ``i``.

* ``symmetric_mnrl`` -- the average of the forward term above and the backward term that
  asks each positive to pick out its own anchor among all anchors of the batch::

      L = 1/2 (L_fwd + L_bwd),  L_bwd = -1/B sum_i log softmax_j(s * sim(p_i, a_j))[i]

  The backward direction uses only the ``B`` anchors as candidates, never the hard negatives;
  this is how sentence-transformers 6 defines ``MultipleNegativesSymmetricRankingLoss``
  (``directions=("query_to_doc", "doc_to_query")``, ``partition_mode="per_direction"``, whose
  averaged log-partition functions make the loss exactly the mean of the two cross-entropies).

* ``supcon`` -- supervised contrastive loss (Khosla et al., 2020, "Supervised Contrastive
  Learning", NeurIPS, eq. 2, the ``L_out`` variant). For each anchor ``i`` with positives
  ``P(i) = {p != i : y_p = y_i}`` and the denominator over every other sample ``A(i) = {a != i}``::

      L_i = -1/|P(i)| sum_{p in P(i)} log( exp(s * sim_ip) / sum_{a in A(i)} exp(s * sim_ia) )

  averaged over the anchors that have at least one positive (the paper sums over anchors; the
  mean, as in the authors' reference implementation, keeps the scale independent of the batch).

* ``cosent`` -- CoSENT (Su Jianlin, 2022, "CoSENT: a more efficient sentence vector scheme
  than Sentence-BERT", kexue.fm/archives/8847). With row-wise similarities
  ``s_i = scale * sim(a_i, b_i)`` and gold scores ``y``::

      L = log( 1 + sum_{(i, j): y_i > y_j} exp(s_j - s_i) )

  a pairwise ranking loss (circle-loss style) that only asks the predicted similarities to be
  ordered like the gold scores; computed stably as ``logsumexp([0, {s_j - s_i}])``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["LOSSES", "SIMILARITIES", "cosent_loss", "mnrl_loss", "pairwise_similarity", "similarity_matrix",
           "supcon_loss", "symmetric_mnrl_loss"]

SIMILARITIES = ("cosine", "dot")
_EPS = 1e-12  # the eps of F.normalize: a row's norm is clamped to at least this before dividing

LOSSES: dict[str, str] = {
    "mnrl": "multiple-negatives ranking / in-batch InfoNCE on (anchor, positive[, negatives]) "
            "(van den Oord et al. 2018; Henderson et al. 2017)",
    "symmetric_mnrl": "mean of anchor->positive and positive->anchor in-batch InfoNCE",
    "supcon": "supervised contrastive loss L_out over labelled embeddings (Khosla et al. 2020, eq. 2)",
    "cosent": "CoSENT pairwise ranking of pair similarities by gold scores (Su Jianlin 2022)",
}


def _check_kind(kind: str) -> None:
    if kind not in SIMILARITIES:
        raise ValueError(f"unknown similarity {kind!r}; expected one of {SIMILARITIES}")


def similarity_matrix(a: Tensor, b: Tensor, kind: str = "cosine") -> Tensor:
    """All-pairs similarity ``[n, m]`` between the rows of ``a`` ``[n, d]`` and ``b`` ``[m, d]``.

    ``"cosine"`` L2-normalises each row (norm clamped to at least 1e-12, so a zero row gives
    similarity 0 rather than NaN) and takes dot products; ``"dot"`` takes raw dot products.
    Any other ``kind`` raises ``ValueError``.
    """
    _check_kind(kind)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [n, d] and [m, d] tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
    if kind == "cosine":
        a, b = F.normalize(a, p=2, dim=1, eps=_EPS), F.normalize(b, p=2, dim=1, eps=_EPS)
    return a @ b.transpose(0, 1)


def pairwise_similarity(a: Tensor, b: Tensor, kind: str = "cosine") -> Tensor:
    """Row-wise similarity ``[n]``: ``sim(a_i, b_i)`` for ``a``, ``b`` of shape ``[n, d]``."""
    _check_kind(kind)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two [n, d] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if kind == "cosine":
        a, b = F.normalize(a, p=2, dim=1, eps=_EPS), F.normalize(b, p=2, dim=1, eps=_EPS)
    return (a * b).sum(dim=-1)


def _candidates(positives: Tensor, negatives: Tensor | None) -> Tensor:
    if negatives is None:
        return positives
    batch = positives.shape[0]
    if negatives.ndim != 2 or negatives.shape[1] != positives.shape[1] or negatives.shape[0] % batch:
        raise ValueError(f"negatives must be [B*k, d] with B={batch}, d={positives.shape[1]}; "
                         f"got {tuple(negatives.shape)}")
    return torch.cat([positives, negatives], dim=0)


def _check_pairs(anchors: Tensor, positives: Tensor) -> None:
    if anchors.ndim != 2 or anchors.shape != positives.shape:
        raise ValueError(f"anchors and positives must both be [B, d]; got {tuple(anchors.shape)} "
                         f"and {tuple(positives.shape)}")


def mnrl_loss(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, scale: float = 20.0,
              similarity: str = "cosine") -> Tensor:
    """Multiple-negatives ranking loss / in-batch-negatives InfoNCE (scalar).

    van den Oord et al. (2018), eq. 4; Henderson et al. (2017), "Efficient Natural Language
    Response Suggestion for Smart Reply". The candidates of every anchor are all ``B`` positives
    followed by the hard ``negatives`` ``[B*k, d]``, which are laid out column by column: rows
    ``0..B-1`` hold every anchor's first negative, rows ``B..2B-1`` every anchor's second, and so
    on (negative ``j`` of anchor ``i`` is row ``j*B + i``). The loss is
    ``cross_entropy(scale * sim(anchors, candidates), arange(B))``; numerically it equals
    ``sentence_transformers.losses.MultipleNegativesRankingLoss`` with default directions.
    """
    _check_pairs(anchors, positives)
    logits = scale * similarity_matrix(anchors, _candidates(positives, negatives), similarity)
    target = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits, target)


def symmetric_mnrl_loss(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None,
                        scale: float = 20.0, similarity: str = "cosine") -> Tensor:
    """Symmetric in-batch InfoNCE (scalar): the mean of a forward and a backward cross-entropy.

    The forward term is :func:`mnrl_loss` (anchors against positives plus hard negatives); the
    backward term is ``cross_entropy(scale * sim(positives, anchors), arange(B))`` -- each
    positive picks its anchor among the ``B`` anchors only; hard negatives do not enter it. This
    follows the installed sentence-transformers 6 ``MultipleNegativesSymmetricRankingLoss``
    (MNRL with ``directions=("query_to_doc", "doc_to_query")``, ``partition_mode="per_direction"``),
    whose "doc_to_query" block scores only the positives against the anchors; the symmetric form
    is the one of Günther et al. (2024), "Jina Embeddings 2", building on van den Oord et al. (2018).
    """
    forward = mnrl_loss(anchors, positives, negatives, scale=scale, similarity=similarity)
    logits = scale * similarity_matrix(positives, anchors, similarity)
    target = torch.arange(anchors.shape[0], device=anchors.device)
    return 0.5 * (forward + F.cross_entropy(logits, target))


def supcon_loss(embeddings: Tensor, labels: Tensor, scale: float = 20.0, similarity: str = "cosine") -> Tensor:
    """Supervised contrastive loss, the ``L_out`` form (Khosla et al., 2020, NeurIPS, eq. 2).

    For anchor ``i`` the softmax runs over every other sample ``a != i`` of the batch, and the
    loss averages ``-log softmax(scale * sim(i, .))[p]`` over its positives ``p != i`` with
    ``labels[p] == labels[i]``. The result is the mean over anchors that have at least one
    positive; when none has, it is ``embeddings.sum() * 0.0`` -- a zero that stays connected to
    the graph, so ``backward()`` still works (with zero gradients).
    """
    if embeddings.ndim != 2 or labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"expected embeddings [N, d] and labels [N]; got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    labels = labels.to(embeddings.device)
    n = embeddings.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positive.sum(dim=1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return embeddings.sum() * 0.0
    logits = scale * similarity_matrix(embeddings, embeddings, similarity)
    log_prob = torch.log_softmax(logits.masked_fill(self_mask, float("-inf")), dim=1)
    # where(), not a product with the mask: the diagonal of log_prob is -inf, and -inf * 0 is NaN
    pos_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    per_anchor = -pos_log_prob[has_pos] / n_pos[has_pos].to(log_prob.dtype)
    return per_anchor.mean()


def cosent_loss(a: Tensor, b: Tensor, scores: Tensor, scale: float = 20.0, similarity: str = "cosine") -> Tensor:
    """CoSENT loss (Su Jianlin, 2022, kexue.fm/archives/8847), scalar.

    With the row-wise ``s_i = scale * sim(a_i, b_i)`` (not the full matrix), the loss is
    ``log(1 + sum_{(i, j): scores_i > scores_j} exp(s_j - s_i))``, evaluated as a logsumexp over
    ``[0]`` and the selected differences, so it is stable for any scale and is exactly 0 when no
    pair has distinct scores. Equals ``sentence_transformers.losses.CoSENTLoss`` (which masks the
    unselected pairs with ``-1e12`` instead of dropping them).
    """
    if scores.ndim != 1 or scores.shape[0] != a.shape[0]:
        raise ValueError(f"scores must be [B] with B={a.shape[0]}; got {tuple(scores.shape)}")
    s = scale * pairwise_similarity(a, b, similarity)
    scores = scores.to(s.device)
    ordered = scores[:, None] > scores[None, :]  # (i, j): i should be more similar than j
    diffs = (s[None, :] - s[:, None])[ordered]  # s_j - s_i for the selected pairs
    return torch.logsumexp(torch.cat([s.new_zeros(1), diffs]), dim=0)
