"""
The protocols of the paper's benchmarks (6.1, 6.2: Table 1, Table 2), on the outputs of a model at
its exits: each eval_ function takes a task's rows, the tokenizer and encode(seqs, what, lengths)
-> {exit: (N, k)} (evaluate.py's batching) and returns (results, {exit: prediction lines in the
CodeXGLUE evaluators' format}, snippets for the timing set). Each protocol is its function's
docstring; chance, BM25 and the NBoW floor (baselines.py) are scored on the same batches.
"""
import json

import numpy as np

from baselines import baseline_ranks, chance_mrr
from metrics import map_at_r, mrr, mrr_at, ndcg_at, precision_recall_f1, ranked_candidates, target_ranks
from stage import note


# -----------------------------------------------------------------------------
# the CodeSearchNet batches, the timing set, the clone pairs

def csn_batches(n, size=1000, seed=0):
    """Row indices of the CodeSearchNet "1 target, 999 distractors" batches (CodeBERT's
    codesearch preprocessing): arange(n) shuffled by numpy's legacy generator seeded `seed`
    (np.random.RandomState(seed).shuffle, the permutation np.random.seed(seed);
    np.random.shuffle gives, without touching the global state), cut into batches of `size`,
    the last partial batch dropped; fewer than `size` rows make one batch of all."""
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    if n == 0:
        return []
    if n < size:
        return [idx]
    return [idx[i:i + size] for i in range(0, n - size + 1, size)]


def timing_sample(lengths, k):
    """Indices of k snippets of median length (a window of the length order): a fixed, typical
    batch with little padding, like the length-sorted batches of the evaluation."""
    order = np.argsort(np.asarray(lengths), kind='stable')
    start = max(0, min(len(order) - k, len(order) // 2 - k // 2))
    return sorted(order[start:start + k].tolist())


class PairInputs:
    """Clone-detection inputs `<sep>func1<sep>func2<cls>`, built when a batch needs them (415k
    BigCloneBench pairs would not fit in memory as token lists); `lengths` are exact, from each
    function's token count and tok.pair's truncation rule."""

    def __init__(self, tok, funcs, pairs, max_len):
        self.tok, self.funcs, self.pairs, self.max_len = tok, funcs, pairs, max_len
        used = sorted({k for a, b, _ in pairs for k in (a, b)})
        n_tok = dict(zip(used, map(len, tok.encode_batch([funcs[k] for k in used]))))
        self.lengths = [min(n_tok[a] + n_tok[b], max_len - 3) + 3 for a, b, _ in pairs]

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        a, b, _ = self.pairs[i]
        return self.tok.pair(self.funcs[a], self.funcs[b], self.max_len)


# -----------------------------------------------------------------------------
# the tasks

def retrieval_metrics(q, c, batches, ids, top=100, ndcg_k=10):
    """q, c: (N, D) embeddings, candidate i is query i's target; each batch (an index array) ranks
    its queries against its own candidates. Returns (ranks (n,), predictions [(query id,
    [candidate ids best first, at most `top`])])."""
    ranks, preds = [], []
    for b in batches:
        b = np.asarray(b)
        S = (q[b] @ c[b].T).numpy()                  # (n_b, n_b) cosine similarities
        ranks.append(target_ranks(S))
        for row, cand in zip(b, ranked_candidates(S, top=top)):
            preds.append((ids[row], [ids[j] for j in b[cand]]))
    return np.concatenate(ranks) if ranks else np.zeros(0), preds


def eval_ranked_batches(groups, inputs, encode, exits, baselines, candidates, pred_top, what):
    """CodeSearchNet's "1 target, 999 distractors" protocol on {group: rows}: per group the rows are
    cut into the batches of csn_batches (`candidates` each) and every query is ranked against the
    codes of its batch. rank = number of candidates scoring >= the target; MRR = mean 1/rank,
    NDCG@10 with the target as the one relevant item, mrr@pred_top what a scorer reading the top
    pred_top predictions gives. inputs(rows) -> (query seqs, code seqs, ids). Returns (results,
    {exit: {group: metrics}}, prediction lines, timing snippets); results['target_similarity'] is
    {group: {exit: (n,) cosine of each query to its target}}, numpy arrays for significance.py that
    the caller pops before writing results.json."""
    res, per, lines, timing = {'exits': {}, 'languages': {}, 'baselines': {}, 'target_similarity': {}}, \
        {e: {} for e in exits}, {e: [] for e in exits}, None
    for lang, rows in groups.items():
        batches = csn_batches(len(rows), candidates, seed=0)
        keep = np.concatenate(batches)
        rows = [rows[i] for i in keep]      # rows of dropped partial batches are never encoded
        pos = {int(i): j for j, i in enumerate(keep)}
        batches = [np.array([pos[int(i)] for i in b]) for b in batches]
        qs, cs, ids = inputs(rows)
        if len(set(ids)) != len(ids):
            note(f"{what}/{lang}: ids are not unique; the prediction file keys on them")
        timing = timing or cs
        emb = encode(qs + cs, f"{what}/{lang}")
        res['languages'][lang] = {'rows': len(groups[lang]), 'queries': len(rows), 'batches': len(batches),
                                  'candidates': len(batches[0])}
        for e in exits:
            zq, zc = emb[e][:len(rows)], emb[e][len(rows):]  # (n, D) each, query i's target is candidate i
            ranks, preds = retrieval_metrics(zq, zc, batches, ids, pred_top)
            per[e][lang] = {'mrr': mrr(ranks), 'ndcg@10': ndcg_at(ranks, 10), f'mrr@{pred_top}': mrr_at(ranks, pred_top)}
            lines[e] += [json.dumps({'url': q, 'answers': a}) for q, a in preds]
            # the diagonal of each batch's similarity matrix: query i against its target (significance.py)
            res['target_similarity'].setdefault(lang, {})[e] = (zq * zc).sum(1).numpy()  # (n,)
        res['baselines'].setdefault('chance', {})[lang] = {'mrr': chance_mrr(batches)}
        for name, score in baselines.items():  # the same queries, candidates and batches
            ranks = baseline_ranks(score, [r['query'] for r in rows], [r['code'] for r in rows], batches)
            res['baselines'].setdefault(name, {})[lang] = {'mrr': mrr(ranks), 'ndcg@10': ndcg_at(ranks, 10)}
    for e in exits:
        res['exits'][str(e)] = {k: float(np.mean([v[k] for v in per[e].values()])) for k in next(iter(per[e].values()))}
    return res, per, lines, timing


def eval_csn(groups, tok, encode, exits, max_len, baselines, candidates=1000, pred_top=100):
    """csn: CodeSearchNet text-to-code (Table 1), per language: the test rows shuffled with numpy's
    legacy generator seeded 0, batches of 1,000, the last partial batch dropped (fewer than 1,000
    rows: one batch of all). MRR and NDCG@10 averaged over languages, and per language."""
    def inputs(rows):
        return ([tok.query_input(r['query'], max_len) for r in rows],
                [tok.code_input(r['code'], r['language'], max_len) for r in rows], [r['id'] for r in rows])
    res, per, lines, timing = eval_ranked_batches(groups, inputs, encode, exits, baselines, candidates, pred_top, 'csn')
    for e in exits:
        res['exits'][str(e)].update({f'{k}/{lang}': x for lang, v in per[e].items() for k, x in v.items()})
    return res, lines, timing


def eval_code_code(rows, tok, encode, exits, max_len, baselines, candidates=1000, pred_top=100):
    """code-code: the code-code pairs of a fine-tuning pairs file (prepare.py's held-out
    data/retrieval/test.jsonl), query code -> its pair, in csn's batches of 1,000 candidates."""
    def inputs(rows):
        return ([tok.code_input(r['query'], r['query_lang'], max_len) for r in rows],
                [tok.code_input(r['code'], r['code_lang'], max_len) for r in rows], [r['id'] for r in rows])
    res, _, lines, timing = eval_ranked_batches({'pairs': rows}, inputs, encode, exits, baselines, candidates,
                                                pred_top, 'code-code')
    res.update(res.pop('languages')['pairs'])
    return res, lines, timing


def eval_ct(rows, tok, encode, exits, max_len, baselines, pred_top=100):
    """ct: CodeXGLUE code-to-code-trans as Java -> C# retrieval (zero-shot in the paper): each Java
    function a query, every C# function of the file a candidate; MRR."""
    qs = [tok.code_input(r['java'], 'java', max_len) for r in rows]
    cs = [tok.code_input(r['cs'], 'c#', max_len) for r in rows]
    emb = encode(qs + cs, 'ct')
    ids, one = [r['id'] for r in rows], [np.arange(len(rows))]
    res = {'exits': {}, 'queries': len(rows), 'candidates': len(rows),
           'baselines': {'chance': {'java-c#': {'mrr': chance_mrr(one)}}}}
    for name, score in baselines.items():
        ranks = baseline_ranks(score, [r['java'] for r in rows], [r['cs'] for r in rows], one)
        res['baselines'][name] = {'java-c#': {'mrr': mrr(ranks), 'ndcg@10': ndcg_at(ranks, 10)}}
    lines = {}
    for e in exits:
        ranks, preds = retrieval_metrics(emb[e][:len(rows)], emb[e][len(rows):], one, ids, pred_top)
        res['exits'][str(e)] = {'mrr': mrr(ranks), f'mrr@{pred_top}': mrr_at(ranks, pred_top)}
        lines[e] = [json.dumps({'url': q, 'answers': a}) for q, a in preds]
    return res, lines, cs


def eval_poj104(rows, tok, encode, exits, max_len):
    """poj104: MAP@R of the CodeXGLUE evaluator (map_at_r) over the programs' embeddings; a program
    whose label no other program has is not a query."""
    cs = [tok.code_input(r['code'], 'c++', max_len) for r in rows]
    emb = encode(cs, 'poj104')
    labels, ids = [r['label'] for r in rows], [r['index'] for r in rows]
    res, lines = {'exits': {}}, {}
    for e in exits:
        z = emb[e]
        score, answers = map_at_r(lambda a, b: (z[a:b] @ z.T).numpy(), labels)
        res['exits'][str(e)] = {'map@r': score}
        lines[e] = [json.dumps({'index': ids[i], 'answers': [ids[j] for j in a]})
                    for i, a in enumerate(answers) if a is not None]
    no_match = sum(a is None for a in answers)
    res.update(queries=len(rows) - no_match, no_match=no_match)
    if no_match:
        note(f"poj104: {no_match} programs have no other program with their label: not queries")
    return res, lines, cs


def eval_bcb(data, tok, encode, exits, max_len, threshold=0.5, speed_batch=64):
    """bcb: BigCloneBench with a clone classifier (finetune.py --task clone): a pair is a clone when
    p(clone) > threshold; precision, recall and F1 of the positive class. The CodeXGLUE evaluator
    keys on (idx1, idx2): a repeated pair counts once, its last line."""
    funcs, pairs, n_missing = data
    inputs = PairInputs(tok, funcs, pairs, max_len)
    probs = encode(inputs, 'bcb', inputs.lengths)
    last = {(a, b): i for i, (a, b, _) in enumerate(pairs)}
    keep = sorted(last.values())
    gold = np.array([pairs[i][2] for i in keep])
    res, lines = {'exits': {}, 'pairs': len(keep), 'skipped': n_missing, 'threshold': threshold}, {}
    for e in exits:
        pred = (probs[e][:, 0].numpy() > threshold).astype(int)
        p, r, f1 = precision_recall_f1(pred[keep], gold)
        res['exits'][str(e)] = {'precision': p, 'recall': r, 'f1': f1}
        lines[e] = [f"{a}\t{b}\t{pred[i]}" for i, (a, b, _) in enumerate(pairs)]
    return res, lines, [inputs[i] for i in timing_sample(inputs.lengths, speed_batch)]
