"""
Near-deduplication (paper 5): MinHash LSH (datasketch), Jaccard threshold 0.7, 256 permutations,
character 5-grams, for the fine-tuning pairs, the clone pairs and SynthCoNL (prepare.py), and the
groups of copies and near-duplicates among a corpus's functions (function_groups). The signatures
are computed in numpy in worker processes, the LSH runs on the main one.
"""
import hashlib
import multiprocessing as mp
import time

import numpy as np

import functions
from stage import print0

_NUM_PERM, _NGRAM = 256, 5


def shingle_hashes(text, k=_NGRAM):
    """Unique 32-bit hashes of the character k-grams of `text` (numpy, no Python loop per gram)."""
    c = np.frombuffer(text.encode('utf-32-le', errors='replace'), dtype=np.uint32).astype(np.uint64)
    if len(c) < k:  # shorter than one gram: the whole text is the one shingle
        c = np.concatenate([c, np.zeros(k - len(c), np.uint64)])
    n = len(c) - k + 1
    h = np.zeros(n, np.uint64)
    for j in range(k):  # polynomial hash of the k code points, mod 2^64
        h = h * np.uint64(1099511628211) + c[j:j + n]
    return np.unique((h ^ (h >> np.uint64(32))).astype(np.uint32))


_PERMS = None


def minhash_signature(text):
    """256 values equal to datasketch.MinHash(num_perm=256, seed=1) (scheme affine32) updated with
    the shingle hashes: min over grams of a_k * fmix32(h) + b_k mod 2^32."""
    global _PERMS
    if _PERMS is None:
        from datasketch import MinHash
        _PERMS = MinHash(num_perm=_NUM_PERM, seed=1, scheme='affine32').permutations
    from datasketch.minhash import _fmix
    a, b = _PERMS
    h = _fmix(shingle_hashes(text), 32)
    return (h[:, None] * a + b).min(axis=0)


def _signatures_chunk(texts):
    return np.stack([minhash_signature(t) for t in texts]) if texts else np.zeros((0, _NUM_PERM), np.uint32)


def minhash_signatures(texts, procs=1, chunk=500):
    """(len(texts), 256) uint32 signatures, computed in `procs` processes."""
    chunks = [texts[i:i + chunk] for i in range(0, len(texts), chunk)]
    if procs > 1 and len(chunks) > 1:
        with mp.Pool(procs) as pool:
            parts = pool.map(_signatures_chunk, chunks)
    else:
        parts = [_signatures_chunk(c) for c in chunks]
    return np.concatenate(parts) if parts else np.zeros((0, _NUM_PERM), np.uint32)


def _lean(sig):
    from datasketch import LeanMinHash
    return LeanMinHash(seed=1, hashvalues=sig, scheme='affine32')


def _signatures_columns(cols):
    return [_signatures_chunk(c) for c in cols]


def minhash_dedup(columns, threshold=0.7, procs=1, chunk=500):
    """Near-deduplicate rows on several text columns (paper 5: MinHash LSH, Jaccard threshold 0.7,
    256 permutations, character 5-grams, "using both" code columns of SynthCoNL). A row is dropped
    when, in any column, it is a near-duplicate of the same column of a row kept before it (an LSH
    candidate whose estimated Jaccard >= threshold); a match across columns does not count.
    columns: list of lists of texts, all of one length. Signatures are datasketch's "affine32"
    permutations computed in numpy (equal to MinHash.update_batch).
    Worker processes hash chunks of rows while this process runs the LSH on the chunks already done.
    Returns (kept row indices, {'removed', 'rows_per_s', 'seconds'})."""
    from datasketch import MinHashLSH
    t0 = time.time()
    n = len(columns[0])
    sigs = [np.empty((n, _NUM_PERM), np.uint32) for _ in columns]
    lshs = [MinHashLSH(threshold=threshold, num_perm=_NUM_PERM) for _ in columns]
    jobs = [[col[i:i + chunk] for col in columns] for i in range(0, n, chunk)]
    pool = mp.Pool(procs) if procs > 1 and len(jobs) > 1 else None
    kept, start = [], 0
    try:
        for parts in (pool.imap(_signatures_columns, jobs) if pool else map(_signatures_columns, jobs)):
            for s, p in zip(sigs, parts):
                s[start:start + len(p)] = p
            for i in range(start, start + len(parts[0])):
                ms = [_lean(s[i]) for s in sigs]
                if not any((s[j] == s[i]).mean() >= threshold for s, m, lsh in zip(sigs, ms, lshs) for j in lsh.query(m)):
                    for m, lsh in zip(ms, lshs):
                        lsh.insert(i, m)
                    kept.append(i)
            start += len(parts[0])
    finally:
        if pool:
            pool.terminate()
    dt = max(time.time() - t0, 1e-9)
    return kept, {'removed': n - len(kept), 'rows_per_s': n / dt, 'seconds': dt}


def near_duplicate_groups(sigs, threshold=0.7):
    """All pairs (i, j), i < j, whose estimated Jaccard >= threshold, via one LSH index."""
    from datasketch import MinHashLSH
    lsh = MinHashLSH(threshold=threshold, num_perm=_NUM_PERM)
    pairs = []
    for i in range(len(sigs)):
        m = _lean(sigs[i])
        for j in lsh.query(m):
            jac = float((sigs[j] == sigs[i]).mean())
            if jac >= threshold:
                pairs.append((j, i, jac))
        lsh.insert(i, m)
    return pairs


# ----------------------------------------------------------------------------- functions of a corpus

def normalized(code):
    return ' '.join(code.split())


def squeeze(code):
    """The code without any whitespace (and without NUL, which decontaminate.py uses as a separator):
    what MinHash compares, so that a re-indented or re-flowed copy is the same code."""
    return ''.join(code.split()).replace('\0', '')


def function_groups(funcs, dedup_threshold, num_proc):
    """Exact duplicates (whitespace-normalised) form groups; MinHash runs on one member of each
    group of >= 3 lines and 100-20,000 characters, on its code without whitespace (squeeze: the
    benchmark files of decontaminate.py re-flow code, and its search reuses these signatures).
    Returns {'reps': members of each group, 'gid': group of each function, 'ok': the groups hashed,
    'sig': their signatures, 'near': (group, group, Jaccard) near-duplicate pairs, 'comp': the
    near-duplicate component of each group} (prepare.clean_functions adds 'rep': the first member
    of each group that is kept)."""
    group_of, reps, gid = {}, [], []
    for k, f in enumerate(funcs):
        key = hashlib.sha1(f"{f['language']}\0{normalized(f['original_string'])}".encode()).digest()
        if key not in group_of:
            group_of[key] = len(reps)
            reps.append([])
        reps[group_of[key]].append(k)
        gid.append(group_of[key])
    ok = [g for g, members in enumerate(reps) if functions.code_lines(funcs[members[0]]['original_string']) >= 3
          and 100 <= len(funcs[members[0]]['original_string']) <= 20000]
    t0 = time.time()
    sigs = minhash_signatures([squeeze(funcs[reps[g][0]]['original_string']) for g in ok], num_proc)
    near = [(ok[i], ok[j], jac) for i, j, jac in near_duplicate_groups(sigs, dedup_threshold)]
    print0(f"minhash: {len(ok):,} distinct functions, {len(near):,} near-duplicate pairs (Jaccard >= {dedup_threshold}) "
           f"in {time.time() - t0:.1f}s ({len(ok) / max(time.time() - t0, 1e-9):,.0f} functions/s)")
    parent = list(range(len(reps)))  # union-find over near-duplicate groups

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for a, b, _ in near:
        parent[find(a)] = find(b)
    return {'reps': reps, 'gid': gid, 'ok': ok, 'sig': {g: sigs[i] for i, g in enumerate(ok)}, 'near': near,
            'comp': [find(g) for g in range(len(reps))]}
