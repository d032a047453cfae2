"""
What the fine-tuning and pre-training data may not hold (prepare.py):
- held-out near-duplicates: a valid or test function that is a copy or a near-duplicate of a
  training function (MinHash, paper 5's settings: Jaccard >= 0.7, 256 permutations, character
  5-grams; vendored copies across packages are common) is dropped from its held-out split, and so
  is a valid function that is one of a test function;
- contamination: a training function (fine-tuning and clone pairs) or a pre-training file (ICC)
  that contains a function of an evaluation set, verbatim or as a near-duplicate, is dropped. The
  evaluation sets are the held-out test split and benchmark files: CodeSearchNet, CodeXGLUE,
  POJ-104 jsonl(.gz) rows with a code field, or text files of one function a line (CodeXGLUE
  code-to-code-trans); paper 6.2 names test-data leakage as what makes a comparison doubtful.

Benchmark files re-flow code (CodeXGLUE puts each function on one line), so contamination is
judged on the code with all whitespace removed (dedup.squeeze), on both sides. An evaluation
function of fewer than MIN_CHARS such characters is not looked for: a one-line getter is in
countless unrelated files. Near-duplicates are looked for among the functions MinHash hashes
(dedup.function_groups: 3+ lines, 100-20,000 characters); the others only for containing one.

    heldout = drop_heldout_near_duplicates(funcs, groups, where)      # {'valid', 'test', 'valid_of_test'}
    evals = load_eval_sets(eval_sources('../shared/data,csn/python/final/jsonl/test'))
    found = find_contamination(evals, funcs, groups, where, split_of, repos, roots, 0.7, num_proc)
"""
import gzip
import hashlib
import multiprocessing as mp
import os
import re
import time

import numpy as np

from dedup import _lean, _NUM_PERM, minhash_signatures, squeeze
from sources import file_tasks, source_text

CODE_FIELDS = ('original_string', 'code', 'func', 'code1', 'code2')  # CodeSearchNet, POJ-104 / BigCloneBench, pairs
MIN_CHARS = 100  # non-whitespace characters of an evaluation function looked for (prepare's MinHash floor too)
DEFAULT_EVAL_DIR = '../shared/data'  # prepare.py's default, beside the repository (not the working directory);
                                     # skipped with a note where it does not exist
TEST_SPLIT = 'test split'  # the name of the held-out test split among the evaluation sets


# ----------------------------------------------------------------------------- held-out near-duplicates

def drop_heldout_near_duplicates(funcs, groups, where):
    """Set where[k] = None for every valid / test function k that is an exact copy (same function
    group, whitespace-normalised) or a near-duplicate (a MinHash pair of groups['near']) of a
    function of a training repository, then for every valid function that is one of a test function
    (validation picks checkpoints and settings: it may not hold the test). groups:
    dedup.function_groups. Returns the counts: {'valid', 'test', 'valid_of_test'}."""
    def near(split):  # the groups of split's functions and their near-duplicates
        own = {g for g, members in enumerate(groups['reps']) if any(where[k] == split for k in members)}
        out = set(own)
        for a, b, _ in groups['near']:
            if a in own or b in own:
                out.update((a, b))
        return out

    dropped = {'valid': 0, 'test': 0, 'valid_of_test': 0}
    trained = near('train')
    for k in range(len(funcs)):
        if where[k] in ('valid', 'test') and groups['gid'][k] in trained:
            dropped[where[k]] += 1
            where[k] = None
    tested = near('test')  # the test functions that are left
    for k in range(len(funcs)):
        if where[k] == 'valid' and groups['gid'][k] in tested:
            dropped['valid_of_test'] += 1
            where[k] = None
    return dropped


# ----------------------------------------------------------------------------- evaluation sets

def _is_eval_file(name):
    """jsonl(.gz), or text: .txt, .txt.gz and CodeXGLUE's {split}.java-cs.txt.{java,cs}."""
    return name.endswith(('.jsonl', '.jsonl.gz', '.txt', '.txt.gz')) or re.search(r'\.txt\.\w+$', name) is not None


def eval_files(path):
    """The files of one --decontaminate entry: the file itself, or a directory's evaluation files."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--decontaminate: {path}: not found (expected a file or directory of evaluation "
                                f"functions)")
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        files += [os.path.join(root, n) for n in sorted(names) if not n.startswith('.') and _is_eval_file(n)]
    if not files:
        raise FileNotFoundError(f"--decontaminate: {path}: no .jsonl, .jsonl.gz or .txt files (evaluation functions)")
    return files


def read_eval_file(path, skip_bad=False):
    """The functions of one evaluation file. jsonl(.gz): the CODE_FIELDS its first row has, of every
    row (skip_bad: malformed lines are skipped); anything else: one function a line."""
    from data import iter_jsonl
    if path.endswith(('.jsonl', '.jsonl.gz')):
        texts, fields = [], None
        for lineno, row in iter_jsonl(path, skip_bad):
            if fields is None:
                fields = [k for k in CODE_FIELDS if isinstance(row.get(k), str)]
                if not fields:
                    raise ValueError(f"{path}:{lineno}: no code field (expected one of {', '.join(CODE_FIELDS)}; "
                                     f"the row has {', '.join(sorted(row)) or 'none'})")
            for k in fields:
                if not isinstance(row.get(k), str):
                    raise ValueError(f"{path}:{lineno}: missing code field {k!r} (the first row has it)")
                texts.append(row[k])
        return texts
    with (gzip.open(path, 'rt', encoding='utf-8', errors='replace') if path.endswith('.gz')
          else open(path, encoding='utf-8', errors='replace')) as f:
        return f.read().splitlines()


def files_sha256(files):
    """sha256 over (path, size, mtime) of the files: a changed evaluation set rebuilds the data."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def eval_sources(spec):
    """[{'path', 'files', 'sha256'}] of a comma-separated --decontaminate list; DEFAULT_EVAL_DIR is
    read beside the repository, and skipped where it does not exist."""
    out = []
    for p in [p.strip() for p in spec.split(',') if p.strip()]:
        where = p
        if p == DEFAULT_EVAL_DIR:
            where = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), p))
            if not os.path.exists(where):
                print(f"decontaminate: {p} not found beside the repository ({where}): checking against the held-out "
                      f"test split only", flush=True)
                continue
        files = eval_files(where)
        out.append({'path': p, 'files': files, 'sha256': files_sha256(files)})
    return out


def load_eval_sets(sources, skip_bad=False):
    """[(path, [distinct squeezed functions of >= MIN_CHARS characters], rows read)] per source."""
    out = []
    for s in sources:
        texts = [t for f in s['files'] for t in read_eval_file(f, skip_bad)]
        kept = sorted({q for q in map(squeeze, texts) if len(q) >= MIN_CHARS})
        out.append((s['path'], kept, len(texts)))
    return out


# ----------------------------------------------------------------------------- verbatim search

# Every window of K = MIN_CHARS code points gets a polynomial hash mod 2^64, all at once in numpy:
# with H[i] = sum_{t<i} c[t] P^-t (a cumulative sum; P is odd, so invertible mod 2^64) the window at
# i is (H[i+K] - H[i]) P^(i+K-1). A window equal to the first K characters of an evaluation function
# is a candidate, confirmed by comparing the whole function.
_P = 0x100000001b3
_MASK = (1 << 24) - 1
_POW, _IPOW = np.zeros(0, np.uint64), np.zeros(0, np.uint64)


def _powers(n):
    global _POW, _IPOW
    if len(_POW) < n:
        m = max(n, 1 << 16)
        p, q = np.full(m, _P, np.uint64), np.full(m, pow(_P, -1, 1 << 64), np.uint64)
        p[0] = q[0] = 1
        _POW, _IPOW = np.cumprod(p), np.cumprod(q)  # wrap mod 2^64
    return _POW[:n], _IPOW[:n]


def window_hashes(text, k=MIN_CHARS):
    """uint64 hash of text[i:i + k] for every i (empty when the text is shorter than k)."""
    return _windows(np.frombuffer(text.encode('utf-32-le', errors='replace'), np.uint32).astype(np.uint64), k)


def _windows(c, k):
    if len(c) < k:
        return np.zeros(0, np.uint64)
    pw, ipw = _powers(len(c))
    h = np.zeros(len(c) + 1, np.uint64)
    np.cumsum(c * ipw, out=h[1:])
    return (h[k:] - h[:-k]) * pw[k - 1:]


class VerbatimIndex:
    """The evaluation functions (squeezed, each >= MIN_CHARS long), found verbatim in other text."""

    def __init__(self, evals):
        self.evals = evals
        anchors = np.array([window_hashes(e[:MIN_CHARS])[0] for e in evals], np.uint64)
        order = np.argsort(anchors, kind='stable')
        self.anchors, self.ids = anchors[order], order
        self.bits = np.zeros(_MASK + 1, bool)  # a first, cheap filter on 24 bits of the hash
        self.bits[self.anchors & np.uint64(_MASK)] = True

    def find(self, text, chunk=1 << 20):
        """{(evaluation id, position)} of the functions that `text` (squeezed) contains. In chunks
        of `chunk` windows: small arrays, reused, are much faster than one of the whole text."""
        c = np.frombuffer(text.encode('utf-32-le', errors='replace'), np.uint32).astype(np.uint64)
        found = set()
        for start in range(0, max(len(c) - MIN_CHARS + 1, 0), chunk):
            w = _windows(c[start:start + chunk + MIN_CHARS - 1], MIN_CHARS)
            pos = np.flatnonzero(self.bits[w & np.uint64(_MASK)])
            for i in pos[np.isin(w[pos], self.anchors)] if len(pos) else ():
                lo = int(np.searchsorted(self.anchors, w[i]))
                while lo < len(self.anchors) and self.anchors[lo] == w[i]:
                    e = int(self.ids[lo])
                    if text.startswith(self.evals[e], start + int(i)):
                        found.add((e, start + int(i)))
                    lo += 1
        return found


_INDEX = None


def _init_scan(evals):
    global _INDEX
    _INDEX = VerbatimIndex(evals)


def _scan_files(tasks):
    """Worker: [(repo, relpath, entry)] -> [(repo, relpath, {evaluation ids it contains})] of the
    files that contain any; the files are joined by NUL (which no squeezed function holds) so that
    numpy runs once per chunk."""
    texts = [squeeze(source_text(e)[0] or '') for _, _, e in tasks]
    ends = np.cumsum([len(t) + 1 for t in texts])
    hits = {}
    for e, pos in _INDEX.find('\0'.join(texts)):
        hits.setdefault(int(np.searchsorted(ends, pos, side='right')), set()).add(e)
    return [(tasks[i][0], tasks[i][1], hits[i]) for i in sorted(hits)]


# ----------------------------------------------------------------------------- contamination

def find_contamination(evals, funcs, groups, where, split_of, repos, roots, threshold=0.7, num_proc=1):
    """Find what contains an evaluation function. evals: [(source, squeezed functions, rows read)]
    (load_eval_sets); the held-out test split's functions (where == 'test', after the held-out
    filter) are added as TEST_SPLIT. Every file of a non-test repository (pre-training reads them)
    is searched for the functions verbatim, and every function of one that MinHash hashed
    (groups: dedup.function_groups, whose signatures are of squeezed code too) is compared to them.
    A training function that contains one verbatim or is a near-duplicate of one gets where[k] =
    None; its file, and a file that contains one verbatim, is to be left out of ICC. Returns
    {'icc_files': {(repo, relpath)}, 'record': the counts per source, for the manifests}."""
    from datasketch import MinHashLSH
    t0 = time.time()
    test = sorted({q for k, f in enumerate(funcs) if where[k] == 'test'
                   for q in [squeeze(f['original_string'])] if len(q) >= MIN_CHARS})
    evals = [(TEST_SPLIT, test, len(test))] + list(evals)
    texts, source_of = [], {}  # one id per distinct evaluation function, with every source that has it
    for si, (_, fs, _) in enumerate(evals):
        for q in fs:
            if q not in source_of:
                source_of[q] = set()
                texts.append(q)
            source_of[q].add(si)
    sources = [source_of[q] for q in texts]
    mine = [split_of.get(f['repo']) != 'test' for f in funcs]  # functions of non-test repositories
    # verbatim: the files of non-test repositories, in worker processes
    tasks = [t for t in file_tasks(repos, roots) if split_of.get(t[0]) != 'test']
    chunks = [tasks[i:i + 64] for i in range(0, len(tasks), 64)] if texts else []
    if num_proc > 1 and len(chunks) > 1:
        with mp.Pool(num_proc, initializer=_init_scan, initargs=(texts,)) as pool:
            in_file = {(r, p): e for part in pool.imap(_scan_files, chunks, chunksize=4) for r, p, e in part}
    else:
        _init_scan(texts)
        in_file = {(r, p): e for c in chunks for r, p, e in _scan_files(c)}
    found = {}  # function -> ({evaluation ids it contains}, {those it near-duplicates})
    for k, f in enumerate(funcs):
        if mine[k] and (f['repo'], f['path']) in in_file:
            q = squeeze(f['original_string'])
            hits = {e for e in in_file[(f['repo'], f['path'])] if texts[e] in q}
            if hits:
                found[k] = (hits, set())
    # near-duplicates: an LSH index of the evaluation functions, queried with each hashed group
    sigs = minhash_signatures(texts, num_proc)
    lsh = MinHashLSH(threshold=threshold, num_perm=_NUM_PERM)
    for i in range(len(texts)):
        lsh.insert(i, _lean(sigs[i]))
    for g in groups['ok'] if texts else ():
        sig = groups['sig'][g]
        near = {int(j) for j in lsh.query(_lean(sig)) if (sigs[j] == sig).mean() >= threshold}
        for k in groups['reps'][g] if near else ():
            if mine[k]:
                found.setdefault(k, (set(), set()))[1].update(near)
    # what is dropped, and why (counted once for each source it matches)
    per = [{'training_functions': 0, 'verbatim': 0, 'near_duplicate': 0, 'icc_files': 0} for _ in evals]
    icc = {key: {s for e in hits for s in sources[e]} for key, hits in in_file.items()}
    n_train = 0
    for k, (verbatim, near) in sorted(found.items()):
        srcs, by_verbatim = {s for e in verbatim | near for s in sources[e]}, {s for e in verbatim for s in sources[e]}
        icc.setdefault((funcs[k]['repo'], funcs[k]['path']), set()).update(srcs)
        if where[k] == 'train':
            where[k] = None
            n_train += 1
            for s in srcs:
                per[s]['training_functions'] += 1
                per[s]['verbatim' if s in by_verbatim else 'near_duplicate'] += 1
    for srcs in icc.values():
        for s in srcs:
            per[s]['icc_files'] += 1
    record = {'threshold': threshold, 'num_perm': _NUM_PERM, 'ngram': 5, 'min_chars': MIN_CHARS,
              'whitespace': 'removed', 'training_functions': n_train, 'icc_files': len(icc),
              'checked': {'functions': sum(mine), 'files': len(tasks)},
              'sources': [dict(source=name, rows=n, functions=len(fs), **per[i])
                          for i, (name, fs, n) in enumerate(evals)],
              'seconds': round(time.time() - t0, 1)}
    return {'icc_files': set(icc), 'record': record}


def report(record):
    """The lines prepare.py prints of a find_contamination record."""
    lines = [f"decontaminate: {s['source']}: {s['functions']:,} functions of >= {record['min_chars']} characters "
             f"({s['rows']:,} read): dropped {s['training_functions']:,} training functions ({s['verbatim']:,} "
             f"verbatim, {s['near_duplicate']:,} near-duplicates) and {s['icc_files']:,} pre-training files"
             for s in record['sources']]
    return lines + [f"decontaminate: dropped {record['training_functions']:,} training functions and "
                    f"{record['icc_files']:,} pre-training files in all (checked {record['checked']['functions']:,} "
                    f"functions and {record['checked']['files']:,} files of non-test repositories in "
                    f"{record['seconds']:.1f}s)"]


def without_files(repos, roots, drop):
    """repos without the files named (repository, relpath) in `drop`."""
    if not drop:
        return repos
    out = {r: [] for r in repos}
    for repo, rel, entry in file_tasks(repos, roots):
        if (repo, rel) not in drop:
            out[repo].append(entry)
    return out
