"""
Evaluation of a fine-tuned MoSE at its exits (paper 6.1, 6.2: Table 1, Table 2, Figure 1b).

Local held-out data (from `python prepare.py`, model from `python finetune.py --task retrieval`):
    python evaluate.py                       # every exit, in one forward pass per batch
    python evaluate.py --exit 18             # one exit
    python evaluate.py --exit 4,36           # some exits
The benchmarks, from their files as distributed (formats: benchmarks.md, data.py):
    python evaluate.py --task csn --csn_dir=CodeSearchNet/resources/data            # {lang}/final/jsonl/test
    python evaluate.py --task ct --ct_dir=CodeXGLUE/Code-Code/code-to-code-trans/data
    python evaluate.py --task poj104 --poj104_path=POJ-104/dataset/test.jsonl
    python evaluate.py --task bcb --bcb_dir=BigCloneBench/dataset                   # clone model
    python evaluate.py --task csn,ct,poj104 ...                                      # several
    python evaluate.py --task all ...        # everything whose data (and model) is there
A released checkpoint:
    python evaluate.py --init_from=ModularStarEncoder-finetuned --tokenizer=starcoder2-tokenizer ...

Tasks and scoring:
- csn: CodeSearchNet text-to-code. Per language, the test rows are shuffled with numpy's legacy
  generator seeded 0 (np.random.RandomState(0).shuffle(arange(n)), the same permutation as
  np.random.seed(0); np.random.shuffle), cut into batches of 1,000 with the last partial batch
  dropped (fewer than 1,000 rows: one batch of all); every query is ranked against the codes of
  its batch. rank = number of candidates scoring >= the target (ties count against the model, the
  target counts itself). MRR = mean 1/rank, NDCG@10 with the target as the one relevant item;
  averages over languages (Table 1).
- code-code: the code-code pairs of a fine-tuning pairs file (prepare.py's held-out
  data/retrieval/test.jsonl), query code -> its pair, the same 1,000-candidate protocol.
- ct: CodeXGLUE code-to-code-trans as Java -> C# retrieval: each Java function a query, every C#
  function of the file a candidate, MRR (zero-shot in the paper).
- poj104: MAP@R as the CodeXGLUE evaluator computes it (R = other programs with the query's label;
  the top R of all other programs; AP = sum over hits at position k of hits-so-far / k, over R).
- bcb: BigCloneBench with a clone classifier (finetune.py --task clone): p(clone) > 0.5,
  precision / recall / F1 of the positive class.
Every csn / code-code / ct result is printed next to chance, BM25 and the learned floor (CodeSearchNet's
NBoW trained on the fine-tuning pairs, baselines.py) on the same batches.
Retrieval inputs are the released prompts `<sep>{instruction}<sep>{text}<cls>` with the languages
'python' (CodeSearchNet's own names), 'java' and 'c#' (ct), 'c++' (poj104); clone inputs are
`<sep>{func1}<sep>{func2}<cls>`. Equal scores are ordered against the model everywhere, in the
metrics and in the prediction files alike.

Outputs in out_dir: results.json (written atomically) and, per task and exit, the predictions the
CodeXGLUE evaluators read:
    predictions/csn_exit{E}.jsonl, code-code_exit{E}.jsonl, ct_exit{E}.jsonl:
        {"url": <query id>, "answers": [<candidate ids, best first>]}  (top `pred_top` of the batch;
        the target's id is the query's id; NL-code-search-Adv's evaluator on this file gives the
        reported "mrr@{pred_top}", which differs from the exact MRR only by queries ranked lower)
    predictions/poj104_exit{E}.jsonl: {"index": <id>, "answers": [<exactly R ids>]}
    predictions/bcb_exit{E}.txt:      idx1<TAB>idx2<TAB>0|1
    tradeoff.png: metric vs forward GFLOPs, one point per exit (Fig. 1b), if matplotlib is installed.
Per exit it prints parameters, forward GFLOPs of a 512-token snippet, measured snippets/s and the
metrics. snippets/s: after the evaluation, the `speed_batch` snippets of median length of the first
task's data are encoded again to that exit alone (a forward stops at its deepest exit), in batches
of `batch_size` as in the evaluation; the median of repeated passes.
"""
import json
import os
import sys
import time

import numpy as np
import torch

from baselines import bm25_scores
from training import UserError, left_pad


# -----------------------------------------------------------------------------
# command line

def parse_exits(spec, valid):
    """'all' -> every configured exit; '18' -> [18]; '4,36' or '[4, 36]' -> [4, 36]."""
    valid = list(valid)
    s = str(spec).strip().strip('[]()').replace(' ', '')
    if s.lower() == 'all':
        return valid
    try:
        exits = sorted({int(x) for x in s.split(',') if x})
    except ValueError:
        exits = []
    if not exits:
        raise UserError(f"--exit={spec!r}: expected an exit layer such as {valid[-1]}, a comma list such as "
                        f"{valid[0]},{valid[-1]}, or 'all'; valid exits: {valid}")
    for e in exits:
        if e not in valid:
            raise UserError(f"exit {e} is not configured; valid exits: {valid}")
    return exits


def parse_tasks(spec):
    """'default' -> csn + code-code, 'all' -> every task (both lenient: a task whose data or model
    is missing is skipped with a note); otherwise a comma list of task names (strict)."""
    known = ('csn', 'code-code', 'ct', 'poj104', 'bcb')
    s = spec.strip().lower()
    if s == 'default':
        return ['csn', 'code-code'], True
    if s == 'all':
        return list(known), True
    names = [t for t in s.replace(' ', '').split(',') if t]
    for t in names:
        if t not in known:
            raise UserError(f"unknown task {t!r}: expected default, all, or a comma list of {', '.join(known)}")
    if not names:
        raise UserError("--task is empty")
    return list(dict.fromkeys(names)), False


# -----------------------------------------------------------------------------
# metrics (pure functions on numpy arrays)

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


# -----------------------------------------------------------------------------
# batching, encoding, timing

class Progress:
    """A stderr line at most every `every` seconds (count, rate, ETA); silent on short runs."""

    def __init__(self, total, what, every=10.0):
        self.total, self.what, self.every = total, what, every
        self.done, self.t0 = 0, time.time()
        self.last = self.t0

    def update(self, n):
        self.done += n
        now = time.time()
        if now - self.last >= self.every and self.done < self.total:
            rate = self.done / (now - self.t0)
            eta = (self.total - self.done) / max(rate, 1e-9)
            print(f"  {self.what}: {self.done:,}/{self.total:,} ({rate:,.1f}/s, eta {eta / 60:.1f} min)",
                  file=sys.stderr, flush=True)
            self.last = now


def batched_forward(fn, seqs, batch_size, pad_id, device='cpu', max_seq_len=None, lengths=None, what='encode'):
    """Run fn(idx (B, T) left-padded) -> {exit: (B, k)} over `seqs` (anything indexable: a list of
    token lists, or an object building sequence i on demand) in batches of similar length: sorted
    longest first (little padding; an out-of-memory shows at once). Returns {exit: (N, k) float32
    on CPU} in the original order. `lengths` (default len(seqs[i])) is only used for sorting."""
    n = len(seqs)
    lengths = [len(seqs[i]) for i in range(n)] if lengths is None else lengths
    order = sorted(range(n), key=lambda i: -lengths[i])
    out, progress = {}, Progress(n, what) if what else None
    for s in range(0, n, batch_size):
        ids = order[s:s + batch_size]
        idx = left_pad([np.asarray(seqs[i]) for i in ids], pad_id, max_len=max_seq_len).to(device)
        res = fn(idx)
        for e, v in res.items():
            if e not in out:
                out[e] = torch.empty(n, v.size(-1), dtype=torch.float32)
            out[e][ids] = v.float().cpu()
        if progress:
            progress.update(len(ids))
    return out


def encoder(model, exits, autocast):
    """idx -> {exit: (B, C) L2-normalised embeddings}: one forward to the deepest exit."""
    @torch.inference_mode()
    def fn(idx):
        with autocast:
            return model.encode(idx, list(exits))
    return fn


def clone_scorer(model, exits, autocast):
    """idx -> {exit: (B, 1) p(clone)} from each exit's classifier: one forward to the deepest exit."""
    @torch.inference_mode()
    def fn(idx):
        with autocast:
            logits = model.classify(idx, list(exits))
        return {e: torch.softmax(v.float(), -1)[:, 1:2] for e, v in logits.items()}
    return fn


def timing_sample(lengths, k):
    """Indices of k snippets of median length (a window of the length order): a fixed, typical
    batch with little padding, like the length-sorted batches of the evaluation."""
    order = np.argsort(np.asarray(lengths), kind='stable')
    start = max(0, min(len(order) - k, len(order) // 2 - k // 2))
    return sorted(order[start:start + k].tolist())


def snippets_per_second(fn, seqs, batch_size, pad_id, device='cpu', max_seq_len=None, min_time=1.0, max_reps=10):
    """Throughput of fn over `seqs`, encoded as the evaluation encodes (batched_forward: sorted by
    length, batches of batch_size). Passes repeat until min_time has passed (at most max_reps);
    snippets/s from the median pass. Run it after the evaluation: kernels and allocator are warm."""
    sync = torch.cuda.synchronize if str(device).startswith('cuda') else (lambda: None)
    times, t_start = [], time.perf_counter()
    while len(times) < max_reps and (not times or time.perf_counter() - t_start < min_time):
        sync()
        t0 = time.perf_counter()
        batched_forward(fn, seqs, batch_size, pad_id, device, max_seq_len, what=None)
        sync()
        times.append(time.perf_counter() - t0)
    return len(seqs) / float(np.median(times))


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
# task evaluation on embeddings

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


def baseline_ranks(score, queries, docs, batches):
    """Ranks of a baseline on the same batches as the model: score(queries, docs) -> (q, n) scores
    of the texts of one batch."""
    return np.concatenate([target_ranks(score([queries[i] for i in b], [docs[i] for i in b])) for b in batches])


def chance_mrr(batches):
    """Expected MRR of a random ranking: 1/n sum_r 1/r for a batch of n candidates, averaged over queries."""
    sizes = np.array([len(b) for b in batches], dtype=np.float64)
    return float(np.sum([np.sum(1.0 / np.arange(1, n + 1)) for n in sizes]) / sizes.sum())


def write_lines(path, lines):
    """Atomic write of text lines (temp file, then os.replace)."""
    tmp = f"{path}.tmp"
    with open(tmp, 'w', encoding='utf-8') as f:
        for line in lines:
            f.write(line + '\n')
    os.replace(tmp, path)


def format_table(header, rows):
    """Right-aligned columns; the first column left-aligned."""
    cells = [header] + [[str(x) for x in r] for r in rows]
    w = [max(len(r[j]) for r in cells) for j in range(len(header))]
    return '\n'.join('  '.join(x.ljust(w[j]) if j == 0 else x.rjust(w[j]) for j, x in enumerate(r)) for r in cells)


def plot_tradeoff(path, series, title, levels=None):
    """Metric (%) vs forward GFLOPs, one point per exit, one line per metric (paper Fig. 1b).
    series: {label: [(exit, GFLOPs, value in [0, 1]), ...]}; levels: {label: {baseline: value}},
    drawn as horizontal lines in the colour of their series (chance, BM25, NBoW). Returns a note
    when matplotlib is missing, else None."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no trade-off plot (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        points = sorted(points)
        xs, ys = [g for _, g, _ in points], [100 * v for _, _, v in points]
        lines = ax.plot(xs, ys, marker='o', label=label)
        color = lines[0].get_color() if lines else None
        for (e, _, _), x, y in zip(points, xs, ys):
            ax.annotate(f"L{e}", (x, y), textcoords='offset points', xytext=(4, 4), fontsize=8)
        for (name, v), style in zip((levels or {}).get(label, {}).items(), (':', '--', '-.')):
            ax.axhline(100 * v, color=color, linestyle=style, linewidth=1, label=f"{label}: {name}")
    ax.set_xlabel('forward GFLOPs per 512-token snippet')
    ax.set_ylabel('score (%)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# -----------------------------------------------------------------------------

if __name__ == '__main__':
    from contextlib import nullcontext

    from baselines import train_nbow
    from data import (load_bigclonebench, load_codesearchnet, load_codexglue_ct, load_poj104, read_pairs,
                      remove_empty_dirs, write_json)
    from model import MoSE, config_from_dict, load_state
    from tokenizer import check_tokenizer, get_tokenizer
    from training import ensure_writable, list_checkpoints, load_checkpoint

    # -------------------------------------------------------------------------
    task = 'default'                 # 'default' (csn + code-code on local data), 'all', or a comma list of
                                     # csn, code-code, ct, poj104, bcb
    exit = 'all'                     # an exit layer (18), a comma list (4,36) or 'all' (one pass for all)
    # models
    init_from = ''                   # checkpoint file, a finetune out_dir (its newest checkpoint) or a released
                                     # checkpoint dir (config.json); '' = out/finetune-retrieval for retrieval
                                     # tasks and out/finetune-clone for bcb
    tokenizer = ''                   # '' = the one recorded in the checkpoint; a released model needs the
                                     # StarCoder-2 tokenizer dir (vocab.json + merges.txt)
    # data (formats as distributed; the defaults are prepare.py's local held-out data)
    split = 'test'
    csn_dir = 'data/codesearchnet'   # {lang}/final/jsonl/{split}/*.jsonl.gz, a {lang} dir, or jsonl(.gz) file(s)
    pairs_dir = 'data/retrieval'     # {split}.jsonl fine-tuning pairs: its code-code pairs
    ct_dir = ''                      # CodeXGLUE code-to-code-trans data dir ({split}.java-cs.txt.{java,cs})
    poj104_path = ''                 # POJ-104 jsonl ({label, index, code}), e.g. test.jsonl
    bcb_dir = 'data/bigclonebench'   # data.jsonl + {split}.txt
    limit = 0                        # > 0: only the first N rows / pairs of each task (a quick look, not comparable)
    # baselines on the same batches as the model (baselines.py): chance, BM25 and the learned floor
    bm25 = True                      # BM25 on csn / code-code / ct
    nbow = True                      # CodeSearchNet's NBoW, trained on nbow_pairs with the model's tokenizer
    nbow_pairs = ''                  # its training pairs; '' = {pairs_dir}/train.jsonl, the fine-tuning pairs
    nbow_seconds = 60.0              # training budget of the NBoW (5 epochs, or fewer if this runs out)
    # inference
    max_len = 512                    # tokens per input, prompt and <cls> included (CodeXGLUE's usual 512)
    batch_size = 64
    candidates = 1000                # csn / code-code batch size: 1 target among 999 distractors
    pred_top = 100                   # candidates per query in the csn / code-code / ct prediction files
    threshold = 0.5                  # bcb: a pair is a clone when p(clone) > threshold
    speed_batch = 64                 # snippets in the fixed timing set (per-exit snippets/s): those of median length
    # output
    out_dir = 'out/eval'
    plot = True                      # tradeoff.png (needs matplotlib)
    # system
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    dtype = 'auto'                   # bfloat16 autocast on GPUs that support it, float32 on CPU
    threads = 0                      # CPU threads for torch; 0 = torch's default. On a CPU shared with other jobs,
                                     # fewer threads than cores avoids OpenMP spin-waits that slow it 10-1000x
    # -------------------------------------------------------------------------
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())  # -> config
    # -------------------------------------------------------------------------

    def fail(msg):
        remove_empty_dirs(created)
        sys.exit(f"error: {msg}")

    def note(msg):
        print(f"note: {msg}")

    try:  # before any work: an unwritable out_dir is found now, not after the evaluation
        created = ensure_writable(out_dir)
    except OSError as e:
        created = []
        fail(f"out_dir {out_dir!r} is not writable ({e.strerror or e})")

    if threads > 0:
        torch.set_num_threads(threads)
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    if dtype == 'auto':
        dtype = 'bfloat16' if device_type == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        fail(f"dtype {dtype!r}: expected auto, float32, bfloat16 or float16")
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    autocast = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype)
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    for key, val in (('batch_size', batch_size), ('candidates', candidates), ('speed_batch', speed_batch),
                     ('max_len', max_len)):
        if val < (3 if key == 'max_len' else 1):
            fail(f"{key}={val} must be positive (max_len >= 3)")

    # --- data: read every selected benchmark first, so that a bad file stops before any model work
    try:
        tasks, lenient = parse_tasks(task)
    except UserError as e:
        fail(e)
    skipped = {}  # task -> why ('default' / 'all': data or model absent)

    def csn_sources(root, split):
        """Paths to read: the distributed layout {root}/{lang}/final/jsonl/{split}/, a {lang} dir, or
        else root itself (a file or directory of jsonl files). Rows are grouped by their language."""
        if os.path.isdir(os.path.join(root, 'final', 'jsonl', split)):
            return [os.path.join(root, 'final', 'jsonl', split)]
        if os.path.isdir(root):
            found = [os.path.join(root, lang, 'final', 'jsonl', split) for lang in sorted(os.listdir(root))
                     if os.path.isdir(os.path.join(root, lang, 'final', 'jsonl', split))]
            if found:
                return found
        if not os.path.exists(root):
            raise FileNotFoundError(f"{root}: not found")
        return [root]

    def limited(rows):
        return rows[:limit] if limit > 0 else rows

    data = {}
    for t in tasks:
        try:
            if t == 'csn':
                langs = {}
                for path in csn_sources(csn_dir, split):
                    for r in load_codesearchnet(path):
                        langs.setdefault(r['language'], []).append(r)
                data[t] = {lang: limited(rows) for lang, rows in sorted(langs.items())}
            elif t == 'code-code':
                path = os.path.join(pairs_dir, f'{split}.jsonl')
                rows = [r for r in read_pairs(path) if r['kind'] == 'code-code']
                if not rows:
                    raise UserError(f"{path}: no code-code pairs")
                data[t] = limited(rows)
            elif t == 'ct':
                if not ct_dir:
                    raise UserError("task ct needs --ct_dir=<CodeXGLUE code-to-code-trans data dir>")
                data[t] = limited(load_codexglue_ct(ct_dir, split))
            elif t == 'poj104':
                if not poj104_path:
                    raise UserError("task poj104 needs --poj104_path=<POJ-104 jsonl, e.g. test.jsonl>")
                rows = limited(load_poj104(poj104_path))
                seen = set()
                for r in rows:
                    if r['index'] in seen:
                        raise ValueError(f"{poj104_path}: index {r['index']!r} occurs twice (indices must be unique)")
                    seen.add(r['index'])
                data[t] = rows
            elif t == 'bcb':
                funcs, pairs, n_missing = load_bigclonebench(bcb_dir, split)
                if n_missing:
                    note(f"bcb: {n_missing:,} pairs of {bcb_dir}/{split}.txt name ids missing from data.jsonl: skipped")
                data[t] = (funcs, limited(pairs), n_missing)
        except (OSError, ValueError, UserError) as e:
            if not lenient or not isinstance(e, (FileNotFoundError, UserError)):
                fail(e)  # 'default' / 'all' skip a task whose data is absent, never a malformed file
            skipped[t] = str(e)
    if not data:
        fail("no data to evaluate: " + '; '.join(f"{t}: {why}" for t, why in skipped.items()) +
             ("; run `python prepare.py` first" if task == 'default' else ''))
    for t, why in skipped.items():
        note(f"skipping {t}: {why}")

    # --- models: one for the retrieval tasks, one (a clone classifier) for bcb
    def load_model(path, kind):
        """(model, tokenizer, description) from a checkpoint file, a training out_dir or a released dir."""
        command = f"python finetune.py --task {'retrieval' if kind == 'retrieval' else 'clone'}"
        if os.path.isfile(os.path.join(path, 'config.json')):
            if not tokenizer:
                raise UserError(f"{path} is a released checkpoint: pass its tokenizer, "
                                f"--tokenizer=<StarCoder-2 tokenizer dir with vocab.json and merges.txt>")
            model = MoSE.from_pretrained(path)
            tok = get_tokenizer(tokenizer)
            desc, step = path, None
        else:
            file = path
            if os.path.isdir(path):
                found = list_checkpoints(path)
                if not found:
                    raise UserError(f"no checkpoint in {path}: run `{command}` first (or pass --init_from=...)")
                file = found[-1]
            elif not os.path.isfile(path):
                raise UserError(f"no checkpoint {'at' if path.endswith('.pt') else 'in'} {path}: run `{command}` "
                                f"first (or pass --init_from=...)")
            ckpt = load_checkpoint(file)
            if not isinstance(ckpt, dict) or 'model' not in ckpt or not ({'model_config', 'config'} & set(ckpt)):
                raise UserError(f"{file}: not a MoSE checkpoint (expected 'model' and 'model_config')")
            model = MoSE(config_from_dict(ckpt.get('model_config', ckpt.get('config')), where=file))
            load_state(model, ckpt['model'], where=file)
            meta = ckpt.get('tokenizer')
            name = tokenizer or (meta.get('source') or meta.get('name') if isinstance(meta, dict) else 'cl100k_base')
            tok = get_tokenizer(name)
            if isinstance(meta, dict):
                check_tokenizer(meta, tok, file)
            desc, step = file, ckpt.get('step')
            del ckpt
        if model.config.vocab_size != tok.n_vocab:
            raise UserError(f"{desc}: the model's vocab_size {model.config.vocab_size} does not match tokenizer "
                            f"{tok.name!r} (n_vocab {tok.n_vocab}); pass --tokenizer=<the model's tokenizer>")
        if kind == 'clone' and model.config.n_classes != 2:
            raise UserError(f"{desc} is not a clone classifier (n_classes={model.config.n_classes}); "
                            f"fine-tune one with `{command}` or pass --init_from=<clone checkpoint>")
        if kind == 'retrieval' and model.config.n_classes:
            raise UserError(f"{desc} is a clone classifier, not a retrieval model; pass --init_from=<retrieval "
                            f"checkpoint> or run `{command}`")
        if kind == 'retrieval' and not model.config.proj_heads:
            note(f"{desc} has no retrieval projection heads (fine-tuned with proj_heads=False, or not fine-tuned): "
                 f"using the {model.config.pooling}-pooled exit states")
        return model.to(device).eval(), tok, {'path': desc, 'step': step, 'tokenizer': tok.name}

    models = {}
    for kind in ('retrieval', 'clone'):
        kind_tasks = [t for t in data if (t == 'bcb') == (kind == 'clone')]
        if not kind_tasks:
            continue
        path = init_from or f'out/finetune-{kind}'
        try:
            models[kind] = load_model(path, kind)
        except (OSError, ValueError, UserError) as e:
            if not lenient or (kind == 'retrieval' and not init_from) or len(data) == len(kind_tasks):
                fail(e)
            for t in kind_tasks:  # 'all': evaluate what the available model can
                skipped[t] = str(e)
                del data[t]
                note(f"skipping {t}: {e}")
    try:
        exit_sets = {kind: parse_exits(exit, m.config.exit_layers) for kind, (m, _, _) in models.items()}
    except UserError as e:
        fail(e)

    # --- the learned floor: an NBoW on the fine-tuning pairs, with the retrieval model's tokenizer
    floor, floor_info = None, None
    if nbow and 'retrieval' in models:
        try:
            nbow_pairs = nbow_pairs or os.path.join(pairs_dir, 'train.jsonl')
            train_rows = read_pairs(nbow_pairs)
        except (OSError, ValueError, UserError) as e:
            note(f"no NBoW baseline: {e}")
        else:
            floor, floor_info = train_nbow([(r['query'], r['code']) for r in train_rows], models['retrieval'][1],
                                           max_seconds=nbow_seconds)
            floor_info['pairs_file'] = nbow_pairs
            print(f"NBoW baseline: {floor_info['epochs']} epochs over {floor_info['pairs']:,} pairs of {nbow_pairs} "
                  f"in {floor_info['seconds']:.1f}s")
    baselines = {'BM25': bm25_scores if bm25 else None,
                 'NBoW': (lambda qs, cs: (floor.embed(qs) @ floor.embed(cs).T).numpy()) if floor else None}
    baselines = {k: v for k, v in baselines.items() if v is not None}

    # --- run
    os.makedirs(os.path.join(out_dir, 'predictions'), exist_ok=True)
    results = {'config': config, 'device': device, 'dtype': dtype, 'threads': torch.get_num_threads(),
               'models': {}, 'tasks': {}, 'nbow': floor_info,
               'skipped': skipped}
    predictions = {}

    def pred_path(t, e, ext='jsonl'):
        p = os.path.join(out_dir, 'predictions', f'{t}_exit{e}.{ext}')
        predictions.setdefault(t, {})[str(e)] = p
        return p

    for kind, (model, tok, info) in models.items():
        exits = exit_sets[kind]
        L = max_len
        if L > model.config.max_seq_len:
            note(f"max_len {L} exceeds the model's max_seq_len {model.config.max_seq_len}: using {model.config.max_seq_len}")
            L = model.config.max_seq_len
        kind_tasks = [t for t in data if (t == 'bcb') == (kind == 'clone')]
        print(f"{kind} model: {info['path']}" + (f" (step {info['step']})" if info['step'] is not None else '') +
              f" | exits {exits} | tokenizer {tok.name} | max_len {L} | {device} {dtype} | tasks {', '.join(kind_tasks)}")
        fn = encoder(model, exits, autocast) if kind == 'retrieval' else clone_scorer(model, exits, autocast)

        def run(seqs, what, lengths=None):
            return batched_forward(fn, seqs, batch_size, tok.pad_id, device, model.config.max_seq_len, lengths, what)

        timing = None  # the first task's snippets make the fixed timing batch
        for t in kind_tasks:
            t0 = time.time()
            res = {'exits': {}}
            if t in ('csn', 'code-code'):
                groups = data[t] if t == 'csn' else {'pairs': data[t]}
                per = {e: {} for e in exits}
                lines = {e: [] for e in exits}
                res['languages'] = {}
                for lang, rows in groups.items():
                    batches = csn_batches(len(rows), candidates, seed=0)
                    keep = np.concatenate(batches)
                    rows = [rows[i] for i in keep]      # rows of dropped partial batches are never encoded
                    pos = {int(i): j for j, i in enumerate(keep)}
                    batches = [np.array([pos[int(i)] for i in b]) for b in batches]
                    if t == 'csn':
                        qs = [tok.query_input(r['query'], L) for r in rows]
                        cs = [tok.code_input(r['code'], r['language'], L) for r in rows]
                        ids = [r['id'] for r in rows]
                    else:
                        qs = [tok.code_input(r['query'], r['query_lang'], L) for r in rows]
                        cs = [tok.code_input(r['code'], r['code_lang'], L) for r in rows]
                        ids = [r['id'] for r in rows]
                    if len(set(ids)) != len(ids):
                        note(f"{t}/{lang}: ids are not unique; the prediction file keys on them")
                    timing = timing or cs
                    emb = run(qs + cs, f"{t}/{lang}")
                    res['languages'][lang] = {'rows': len(groups[lang]), 'queries': len(rows),
                                              'batches': len(batches), 'candidates': len(batches[0])}
                    for e in exits:
                        ranks, preds = retrieval_metrics(emb[e][:len(rows)], emb[e][len(rows):], batches, ids, pred_top)
                        per[e][lang] = {'mrr': mrr(ranks), 'ndcg@10': ndcg_at(ranks, 10),
                                        f'mrr@{pred_top}': mrr_at(ranks, pred_top)}
                        lines[e] += [json.dumps({'url': q, 'answers': a}) for q, a in preds]
                    qt, ct_ = [r['query'] for r in rows], [r['code'] for r in rows]
                    res.setdefault('baselines', {}).setdefault('chance', {})[lang] = {'mrr': chance_mrr(batches)}
                    for name, score in baselines.items():  # the same queries, candidates and batches
                        ranks = baseline_ranks(score, qt, ct_, batches)
                        res['baselines'].setdefault(name, {})[lang] = {'mrr': mrr(ranks), 'ndcg@10': ndcg_at(ranks, 10)}
                for e in exits:
                    m = {k: float(np.mean([v[k] for v in per[e].values()])) for k in next(iter(per[e].values()))}
                    if t == 'csn':
                        for lang, v in per[e].items():
                            m.update({f'{k}/{lang}': x for k, x in v.items()})
                    res['exits'][str(e)] = m
                    write_lines(pred_path(t, e), lines[e])
                if t == 'code-code':
                    res.update(res.pop('languages')['pairs'])
            elif t == 'ct':
                rows = data[t]
                qs = [tok.code_input(r['java'], 'java', L) for r in rows]
                cs = [tok.code_input(r['cs'], 'c#', L) for r in rows]
                timing = timing or cs
                emb = run(qs + cs, t)
                ids = [r['id'] for r in rows]
                res.update(queries=len(rows), candidates=len(rows))
                one = [np.arange(len(rows))]
                res['baselines'] = {'chance': {'java-c#': {'mrr': chance_mrr(one)}}}
                for name, score in baselines.items():
                    ranks = baseline_ranks(score, [r['java'] for r in rows], [r['cs'] for r in rows], one)
                    res['baselines'][name] = {'java-c#': {'mrr': mrr(ranks), 'ndcg@10': ndcg_at(ranks, 10)}}
                for e in exits:
                    ranks, preds = retrieval_metrics(emb[e][:len(rows)], emb[e][len(rows):], one, ids, pred_top)
                    res['exits'][str(e)] = {'mrr': mrr(ranks), f'mrr@{pred_top}': mrr_at(ranks, pred_top)}
                    write_lines(pred_path(t, e), [json.dumps({'url': q, 'answers': a}) for q, a in preds])
            elif t == 'poj104':
                rows = data[t]
                cs = [tok.code_input(r['code'], 'c++', L) for r in rows]
                timing = timing or cs
                emb = run(cs, t)
                labels = [r['label'] for r in rows]
                ids = [r['index'] for r in rows]
                for e in exits:
                    z = emb[e]
                    score, answers = map_at_r(lambda a, b: (z[a:b] @ z.T).numpy(), labels)
                    res['exits'][str(e)] = {'map@r': score}
                    write_lines(pred_path(t, e), [json.dumps({'index': ids[i], 'answers': [ids[j] for j in a]})
                                                  for i, a in enumerate(answers) if a is not None])
                no_match = sum(a is None for a in answers)
                res.update(queries=len(rows) - no_match, no_match=no_match)
                if no_match:
                    note(f"poj104: {no_match} programs have no other program with their label: not queries")
            else:  # bcb
                funcs, pairs, n_missing = data[t]
                inputs = PairInputs(tok, funcs, pairs, L)
                timing = timing or [inputs[i] for i in timing_sample(inputs.lengths, speed_batch)]
                probs = run(inputs, t, inputs.lengths)
                # the CodeXGLUE evaluator keys on (idx1, idx2): a repeated pair counts once, its last line
                last = {(a, b): i for i, (a, b, _) in enumerate(pairs)}
                keep = sorted(last.values())
                gold = np.array([pairs[i][2] for i in keep])
                res.update(pairs=len(keep), skipped=n_missing, threshold=threshold)
                for e in exits:
                    pred = (probs[e][:, 0].numpy() > threshold).astype(int)
                    p, r, f1 = precision_recall_f1(pred[keep], gold)
                    res['exits'][str(e)] = {'precision': p, 'recall': r, 'f1': f1}
                    write_lines(pred_path(t, e, 'txt'), [f"{a}\t{b}\t{pred[i]}" for i, (a, b, _) in enumerate(pairs)])
            res['seconds'] = time.time() - t0
            res['model'] = kind
            res['predictions'] = predictions.get(t, {})
            results['tasks'][t] = res

        # per-exit cost: the fixed timing set encoded again, to each exit alone (one forward to the
        # deepest exit does not tell what a shallower exit costs by itself)
        tb = [timing[i] for i in timing_sample([len(x) for x in timing], speed_batch)]
        cost = {}
        for e in exits:
            one = encoder(model, [e], autocast) if kind == 'retrieval' else clone_scorer(model, [e], autocast)
            cost[e] = {'params': model.num_params(e), 'gflops_512': model.estimate_flops(512, e) / 1e9,
                       'snippets_per_s': snippets_per_second(one, tb, batch_size, tok.pad_id, device,
                                                             model.config.max_seq_len)}
        info = dict(info, exits={str(e): c for e, c in cost.items()},
                    timing={'snippets': len(tb), 'mean_tokens': float(np.mean([len(s) for s in tb])),
                            'batch_size': batch_size})
        results['models'][kind] = info

        # table: cost and headline metrics per exit
        heads = {'csn': [('mrr', 'csn MRR'), ('ndcg@10', 'csn NDCG@10')], 'code-code': [('mrr', 'code-code MRR')],
                 'ct': [('mrr', 'ct MRR')], 'poj104': [('map@r', 'poj104 MAP@R')],
                 'bcb': [('precision', 'bcb P'), ('recall', 'bcb R'), ('f1', 'bcb F1')]}
        cols = [(t, k, label) for t in kind_tasks for k, label in heads[t]]
        header = ['exit', 'params', 'GFLOPs/512', 'snippets/s'] + [label for _, _, label in cols]
        rows = [[str(e), f"{cost[e]['params'] / 1e6:.1f}M", f"{cost[e]['gflops_512']:.2f}",
                 f"{cost[e]['snippets_per_s']:.1f}"] +
                [f"{100 * results['tasks'][t]['exits'][str(e)][k]:.2f}" for t, k, _ in cols] for e in exits]
        print(f"\nmetrics in %; snippets/s: {len(tb)} snippets of median length of {kind_tasks[0]} "
              f"({info['timing']['mean_tokens']:.0f} tokens) in batches of {batch_size}, {device} {dtype}"
              + (f", {torch.get_num_threads()} thread(s)" if device_type == 'cpu' else ''))
        print(format_table(header, rows))
        for t in kind_tasks:
            for name, b in results['tasks'][t].get('baselines', {}).items():
                print(f"{name} on the same {t} batches: MRR {100 * np.mean([v['mrr'] for v in b.values()]):.2f}"
                      + (f", NDCG@10 {100 * np.mean([v['ndcg@10'] for v in b.values()]):.2f}" if name != 'chance' else ''))
        if 'csn' in kind_tasks and len(data['csn']) > 1:
            langs = list(data['csn'])
            print('\ncsn MRR by language (%)')
            print(format_table(['exit'] + langs + ['avg'],
                               [[str(e)] + [f"{100 * results['tasks']['csn']['exits'][str(e)][f'mrr/{l}']:.2f}"
                                            for l in langs] +
                                [f"{100 * results['tasks']['csn']['exits'][str(e)]['mrr']:.2f}"] for e in exits]))
        print()

    path = os.path.join(out_dir, 'results.json')
    write_json(path, results)
    print(f"wrote {path} and predictions in {os.path.join(out_dir, 'predictions')}")
    if plot:
        series, levels = {}, {}
        for t, res in results['tasks'].items():
            k = {'csn': 'mrr', 'code-code': 'mrr', 'ct': 'mrr', 'poj104': 'map@r', 'bcb': 'f1'}[t]
            cost = results['models'][res['model']]['exits']
            series[f"{t} {k.upper()}"] = [(int(e), cost[e]['gflops_512'], v[k]) for e, v in res['exits'].items()]
            levels[f"{t} {k.upper()}"] = {name: float(np.mean([v[k] for v in b.values()]))
                                          for name, b in res.get('baselines', {}).items()}
        msg = plot_tradeoff(os.path.join(out_dir, 'tradeoff.png'), series, 'MoSE: cost vs quality per exit', levels)
        print(f"note: {msg}" if msg else f"wrote {os.path.join(out_dir, 'tradeoff.png')}")
