"""
The retrieval and classification metrics of the project, pure functions on numpy arrays, shared
by evaluate.py (the benchmarks) and finetune.py (its validation). Equal scores count against the
model everywhere: a target tied with another candidate ranks below it.
"""
import numpy as np


def target_ranks(scores, targets=None):
    """Rank of each query's target among the candidates: the number of candidates whose score is
    >= the target's (ties count against the model; the target counts itself). scores: (Q, N);
    targets: (Q,) column of each query's target (default: query i's target is candidate i)."""
    scores = np.asarray(scores)
    q = np.arange(len(scores))
    t = q if targets is None else np.asarray(targets)
    return (scores >= scores[q, t][:, None]).sum(1)


def mrr(ranks):
    return float(np.mean(1.0 / np.asarray(ranks, dtype=np.float64)))


def mrr_at(ranks, k):
    """MRR with ranks beyond k counted as 0: what a scorer reading top-k predictions gives."""
    r = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(np.where(r <= k, 1.0 / r, 0.0)))


def ndcg_at(ranks, k=10):
    """NDCG@k with one relevant item (the target) of gain 1: DCG = 1/log2(rank + 1) within the top
    k, and the ideal DCG is 1."""
    r = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(np.where(r <= k, 1.0 / np.log2(r + 1), 0.0)))


def ranked_candidates(scores, targets=None, top=None):
    """(Q, top) candidate columns per query, best first; among equal scores the target comes last
    (ties against the model, as in target_ranks: the target's position + 1 is its rank), the
    others in column order."""
    scores = np.asarray(scores)
    Q, N = scores.shape
    t = np.arange(Q) if targets is None else np.asarray(targets)
    is_target = np.zeros((Q, N), dtype=np.int8)
    is_target[np.arange(Q), t] = 1
    order = np.lexsort((is_target, -scores), axis=-1)  # by score descending, then target last
    return order[:, :top] if top else order


def map_at_r(scores, labels, chunk=1024):
    """MAP@R of the CodeXGLUE POJ-104 evaluator. For query i, R = number of other items with its
    label; all other items are ranked by score (among equal scores the non-matching ones first:
    ties count against the model) and the top R kept; AP = sum over hits at position k of
    (hits so far / k), divided by R. Queries with R = 0 have no answer and are left out.
    scores: (N, N) array, or a function (start, stop) -> scores of those query rows (N columns).
    Returns (MAP@R, answers: list of the top-R column arrays, None where R = 0)."""
    labels = np.asarray(labels)
    N = len(labels)
    get = scores if callable(scores) else (lambda a, b: np.asarray(scores[a:b]))
    same_count = {lab: c for lab, c in zip(*np.unique(labels, return_counts=True))}
    aps, answers = [], []
    for a in range(0, N, chunk):
        S = np.array(get(a, min(a + chunk, N)), dtype=np.float64)      # (c, N)
        rows = np.arange(a, a + len(S))
        rel = (labels[None, :] == labels[rows, None]).astype(np.int8)  # (c, N)
        rel[np.arange(len(S)), rows] = 0
        S[np.arange(len(S)), rows] = -np.inf                           # self last, never in the top R
        order = np.lexsort((rel, -S), axis=-1)
        for j, i in enumerate(rows):
            R = int(same_count[labels[i]]) - 1
            if R == 0:
                answers.append(None)
                continue
            top = order[j, :R]
            hits = rel[j, top].astype(np.float64)
            aps.append(float((np.cumsum(hits) / np.arange(1, R + 1) * hits).sum() / R))
            answers.append(top)
    return (float(np.mean(aps)) if aps else float('nan')), answers


def precision_recall_f1(pred, gold):
    """Binary precision, recall and F1 of the positive class (0 where undefined, as scikit-learn)."""
    pred, gold = np.asarray(pred).astype(bool), np.asarray(gold).astype(bool)
    tp = int((pred & gold).sum())
    p = tp / int(pred.sum()) if pred.sum() else 0.0
    r = tp / int(gold.sum()) if gold.sum() else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)
