"""
Prepare the data of every stage: ICC pre-training shards, fine-tuning pairs, clone-detection pairs.

    python prepare.py                                   # everything, from the local Python sources
    python prepare.py --task=icc --max_len=512          # ICC shards only (data/icc/)
    python prepare.py --task=icc --input=stack.jsonl    # a Stack-v2 style dump: {repo_name, content} a line
    python prepare.py --task=icc --input=repos/         # a directory whose subdirectories are repositories
    python prepare.py --task=retrieval --input=csn/python/final/jsonl   # CodeSearchNet -> text-code pairs
    python prepare.py --task=synthconl --input=SynthCoNL/data           # SynthCoNL parquet/jsonl -> pairs
    python prepare.py --task=dedup-bench                # near-dedup speed on 100k SynthCoNL-format rows

Outputs under out_dir (formats in data.py):
    icc/{train,val}_NNNN.bin + icc/manifest.json        pre-training (paper 2.1, Fig. 2)
    retrieval/{train,valid,test}.jsonl                  fine-tuning pairs: text-code and code-code
    codesearchnet/python/final/jsonl/{split}/python_{split}_0.jsonl.gz   the same functions, CSN layout
    bigclonebench/data.jsonl + {train,valid,test}.txt   clone detection, BigCloneBench layout
    synthconl/train.jsonl                               SynthCoNL after near-dedup, as pairs

The default corpus (input='') is the source code of the running Python installation: the
standard library and site-packages. A repository is a distribution of site-packages (found with
importlib.metadata, so _pytest/, pytest/ and py.py are one repository), or a top-level package of
the standard library; the standard library's single-file modules together are one repository
("stdlib", CPython's Lib/ directory). Binary, undecodable, generated and minified files and files
over 1 MB are skipped and counted.

Fine-tuning data from a corpus (paper 4.1 uses SynthCoNL, which is not shipped; this builds the
same kinds of pairs from real local code, CodeSearchNet's way):
- text-code: Python functions with a docstring; query = first paragraph of the docstring, code =
  the function without it. CodeSearchNet's filters: >= 3 lines of code, >= 3 words of query, no
  "test" in the name, no dunder methods, exact and near duplicates removed.
- code-code: pairs of real functions that are near-duplicates of each other (MinHash, Jaccard of
  character 5-grams >= 0.7) but not identical text once docstrings are removed: vendored copies in
  other versions (pip/_vendor vs the standalone package), "Copied from" model code in transformers,
  ports between packages, overrides of one method in sibling classes. Both functions must have the
  same name, so that a pair is one function in two places rather than look-alike siblings
  (pad_start / pad_end). Both sides are real code, like SynthCoNL's "same task, different code"
  pairs (there across languages, here Python-Python). Each function is
  in at most one pair (a greedy matching, most similar first), so a cluster of look-alike
  functions does not fill a batch with false negatives.
- clone detection: positives are near-duplicate function pairs (each function in at most 3) plus
  identical copies in different files (at most 3 pairs per group of identical functions);
  negatives an equal number of random function pairs of the same split whose estimated Jaccard is
  below 0.3. Balanced 1:1.
Splits are by repository everywhere: no repository on two sides; a pair across two splits is dropped.

Near-deduplication (paper 5): MinHash LSH (datasketch), Jaccard threshold 0.7, 256 permutations,
character 5-grams, over both code columns of SynthCoNL: rows are visited in order and a row is
dropped when its func1_CSN is a near-duplicate of the func1_CSN of a row already kept, or its func2
of a kept row's func2 (the paper dedups "using both" columns; a match across columns, e.g. a
translation back into the other column's language, is not counted). Signatures are computed in numpy with datasketch's own "affine32" permutations
(equal to datasketch's MinHash.update_batch), in worker processes; LSH insert/query on the main one.
"""
import hashlib
import importlib.metadata
import json
import multiprocessing as mp
import os
import re
import sys
import sysconfig
import time

import numpy as np

from stage import fail, make_dir, print0

# -----------------------------------------------------------------------------
# what to build
task = 'all'  # 'all' (icc + retrieval + clone) | 'icc' | 'retrieval' | 'clone' | 'synthconl' | 'dedup-bench'
input = ''  # '' = local Python sources; a dir of repositories; a jsonl(.gz) of files; CSN / SynthCoNL files
out_dir = 'data'
# tokenisation and ICC sequences (paper 2.1)
tokenizer = 'cl100k_base'  # or a directory with StarCoder-2's vocab.json + merges.txt
bpe_vocab = 0  # > 0: train a byte-level BPE of this many entries on the training repositories (out_dir/tokenizer/)
# and build everything with it instead of `tokenizer`
bpe_bytes = 64_000_000  # cap on the source bytes the BPE is trained on (files in seeded order)
max_len = 2048  # tokens per sequence, <sep> and <cls> included
snippet_len = 0  # longest snippet in tokens; longer files are split at line boundaries. 0 = (max_len - 3) // 2,
# so that a second snippet always fits: with whole-sequence snippets (max_len - 2) the long files of
# the default corpus fill a sequence alone and only ~4% of sequences mix two repositories (paper: 50%)
val_fraction = 0.05  # ICC validation share (of bytes), split by repository
shard_tokens = 64 * 2 ** 20  # tokens per shard file
max_bytes = 0  # cap on the corpus bytes read (0 = all); repositories are dropped whole, in seeded order
# fine-tuning and clone data
heldout_fraction = 0.1  # share of functions (by repository) for valid, and again for test
dedup_threshold = 0.7  # Jaccard threshold of near-duplicates (paper 5)
bench_rows = 100_000  # rows of the dedup benchmark
# system
seed = 1337
num_proc = os.cpu_count() or 1
skip_bad_lines = False  # malformed jsonl lines: False = stop with file:line, True = skip and count
# -----------------------------------------------------------------------------

SOURCE_EXTS = {'.py', '.pyi', '.pyx', '.pxd', '.pxi', '.c', '.h', '.cc', '.cpp', '.cxx', '.hpp', '.hh', '.cu',
               '.cuh', '.js', '.mjs', '.ts', '.java', '.go', '.rs', '.rb', '.php', '.sh', '.pl', '.lua', '.r',
               '.scala', '.kt', '.swift', '.cs', '.m', '.f90', '.sql', '.jl', '.hs', '.ml'}
_MAX_FILE_BYTES = 1_000_000
GENERATED = re.compile(r"auto-?generated|@generated|do not edit|generated by|this file (is|was) (automatically )?generated"
                       r"|generated automatically", re.I)
_NUM_PERM, _NGRAM = 256, 5



# ----------------------------------------------------------------------------- corpus

def read_source(path):
    """(text, None) or (None, reason) for a file of the corpus."""
    try:
        with open(path, 'rb') as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
    except OSError:
        return None, 'unreadable'
    return check_source(raw, path)


def source_text(src):
    """(text, None) or (None, reason) for a corpus entry: a path, or (path, text) from a jsonl dump."""
    if isinstance(src, tuple):
        return check_source(src[1].encode('utf-8', errors='replace'), src[0])
    return read_source(src)


def check_source(raw, path=''):
    if len(raw) > _MAX_FILE_BYTES:
        return None, 'over 1 MB'
    if b'\0' in raw:
        return None, 'binary'
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError:
        return None, 'undecodable'
    if not text.strip():
        return None, 'empty'
    if GENERATED.search('\n'.join(text[:3000].split('\n')[:5])):  # a marker in the first lines
        return None, 'generated'
    lines = text.count('\n') + 1
    if len(text) > 2000 and len(text) / lines > 200:  # minified code or data, not lines a person wrote
        return None, 'minified'
    return text, None


def default_corpus():
    """{repository: [file paths]} for the running interpreter's stdlib and site-packages."""
    paths = sysconfig.get_paths()
    stdlib = os.path.realpath(paths['stdlib'])
    sites = sorted({os.path.realpath(paths[k]) for k in ('purelib', 'platlib')})
    dist_of = {k: v[0] for k, v in importlib.metadata.packages_distributions().items()}
    repos = {}
    for root, prefix in [(stdlib, 'stdlib')] + [(s, 'site-packages') for s in sites]:
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            p = os.path.join(root, name)
            if os.path.realpath(p) in sites or name in ('site-packages', 'dist-packages', '__pycache__') or \
                    name.endswith(('.dist-info', '.egg-info', '.libs', '.pth')):
                continue
            mod = name.split('.')[0]
            if prefix == 'stdlib':
                repo = f"stdlib/{name}" if os.path.isdir(p) else 'stdlib'
            else:
                repo = f"site-packages/{dist_of.get(mod, mod)}"
            if os.path.isdir(p):
                files = []
                for r, ds, fs in os.walk(p):
                    ds[:] = sorted(d for d in ds if d != '__pycache__')
                    files += [os.path.join(r, f) for f in sorted(fs)]
            else:
                files = [p]
            files = [f for f in files if os.path.splitext(f)[1].lower() in SOURCE_EXTS and os.path.isfile(f)]
            repos.setdefault(repo, []).extend(files)
    return repos


def dir_corpus(path):
    """{repository: [file paths]}: each subdirectory of `path` is a repository."""
    repos, loose = {}, 0
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
        if not os.path.isdir(p):
            loose += 1
            continue
        files = []
        for r, ds, fs in os.walk(p):
            ds[:] = sorted(d for d in ds if not d.startswith('.'))
            files += [os.path.join(r, f) for f in sorted(fs) if os.path.splitext(f)[1].lower() in SOURCE_EXTS]
        repos[name] = files
    if loose:
        print0(f"note: {path}: {loose} files directly in the corpus directory are ignored (repositories are its subdirectories)")
    return repos


_REPO_FIELDS, _TEXT_FIELDS, _PATH_FIELDS = ('repo_name', 'repository_name', 'repo'), ('content', 'text', 'code'), \
    ('path', 'file_path', 'func_path_in_repository')


def jsonl_corpus(path, skip_bad=False):
    """{repository: [(path, text)]} from a jsonl(.gz) with one file a line (The Stack v2 layout)."""
    from data import iter_jsonl
    stats, repos = {}, {}
    for lineno, r in iter_jsonl(path, skip_bad, stats):
        repo = next((r[k] for k in _REPO_FIELDS if k in r), None)
        text = next((r[k] for k in _TEXT_FIELDS if k in r), None)
        if repo is None or text is None:
            raise ValueError(f"{path}:{lineno}: expected a repository field ({' / '.join(_REPO_FIELDS)}) and a "
                             f"content field ({' / '.join(_TEXT_FIELDS)}), got {', '.join(sorted(r)) or 'nothing'}")
        fpath = next((r[k] for k in _PATH_FIELDS if k in r), f"line{lineno}")
        repos.setdefault(str(repo), []).append((f"{path}:{lineno}:{fpath}", str(text)))
    if stats['bad_lines'] or stats['replaced_lines']:
        print0(f"warning: {path}: skipped {stats['bad_lines']} malformed lines; replaced undecodable bytes in "
            f"{stats['replaced_lines']} lines")
    return repos


def load_corpus(inp):
    if not inp:
        return default_corpus(), 'local python sources'
    if os.path.isdir(inp):
        return dir_corpus(inp), os.path.abspath(inp)
    if os.path.isfile(inp) and inp.endswith(('.jsonl', '.jsonl.gz', '.json')):
        return jsonl_corpus(inp, skip_bad_lines), os.path.abspath(inp)
    raise FileNotFoundError(f"input {inp!r}: not found (expected a directory of repositories or a .jsonl(.gz) file)")


def corpus_fingerprint(repos):
    """sha256 over (repository, file, size, mtime): a changed corpus is rebuilt."""
    h = hashlib.sha256()
    for repo in sorted(repos):
        for f in repos[repo]:
            if isinstance(f, tuple):
                h.update(f"{repo}\0{f[0]}\0{hashlib.sha1(f[1].encode()).hexdigest()}\n".encode())
            else:
                st = os.stat(f)
                h.update(f"{repo}\0{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cap_corpus(repos, limit, seed_):
    """Keep whole repositories, in a seeded order, until `limit` bytes."""
    if not limit:
        return repos
    order = sorted(repos)
    np.random.default_rng(seed_).shuffle(order)
    kept, total = {}, 0
    for r in order:
        size = sum(len(f[1].encode()) if isinstance(f, tuple) else os.path.getsize(f) for f in repos[r])
        if total + size > limit and kept:
            continue
        kept[r], total = repos[r], total + size
    return kept


# ----------------------------------------------------------------------------- snippets and ICC

def split_snippets(text, tok, budget):
    """Token id lists of <= budget tokens each: the whole file if it fits, else chunks cut at line
    boundaries (paper 2.1: snippets are files; long ones are split so each fits with <sep>, <cls>).
    Each chunk is encoded on its own (a token never spans two snippets); a single line longer than
    the budget is cut by tokens."""
    ids = tok.encode(text)
    if len(ids) <= budget:
        return [ids] if ids else []
    lines = text.splitlines(keepends=True)
    if len(lines) == 1:
        return [ids[i:i + budget] for i in range(0, len(ids), budget)]
    # tokens per line from the one encoding: a token counts for the line where its first byte is
    tok_start = np.cumsum(tok.token_byte_lengths()[ids]) - tok.token_byte_lengths()[ids]
    line_start = np.cumsum([0] + [len(l.encode('utf-8')) for l in lines[:-1]])
    counts = np.diff(np.append(np.searchsorted(tok_start, line_start), len(ids))).tolist()
    target = max(1, budget - 16)  # re-encoding a chunk can differ by a few tokens at its edges
    chunks, cur, n = [], [], 0
    for line, c in zip(lines, counts):
        if cur and n + c > target:
            chunks.append(''.join(cur))
            cur, n = [], 0
        cur.append(line)
        n += c
    chunks.append(''.join(cur))
    if len(chunks) == 1:  # cannot happen unless counts were off: halve
        half = len(lines) // 2
        chunks = [''.join(lines[:half]), ''.join(lines[half:])]
    return [s for c in chunks for s in split_snippets(c, tok, budget)]  # re-encode; recurse if still long


def assign_splits(sizes, fractions, seed_):
    """{repository: split}: repositories in seeded order, each to the split most behind its target
    share of `sizes` (so a huge repository lands in the largest split). Every split with a non-zero
    fraction gets at least one repository when there are enough."""
    names = sorted(sizes)
    np.random.default_rng(seed_).shuffle(names)
    splits = [s for s in fractions if fractions[s] > 0]
    got = {s: 0 for s in splits}
    out, total = {}, 0
    for r in names:
        total += sizes[r]
        s = max(splits, key=lambda s: (fractions[s] * total - got[s], fractions[s]))
        out[r] = s
        got[s] += sizes[r]
    for s in splits:
        members = {t: [r for r in out if out[r] == t] for t in splits}
        if not members[s] and len(names) >= len(splits):
            donor = max(splits, key=lambda t: len(members[t]))
            r = min(members[donor], key=lambda r: (sizes[r], r))
            out[r] = s
    return out


def icc_plan(lengths, max_len, seed_):
    """Figure 2's build_concatenation over all repositories, on snippet lengths only.

    lengths: per repository, the token counts of its snippets (each <= max_len - 2).
    Returns [(label, [(repo, snippet), ...])] where every snippet appears exactly once.
    Repository a is drawn with probability proportional to its remaining snippets (so pools drain
    evenly), and with probability 1/2 a second repository b is interleaved: a, b, a, b, ...
    Differences from the pseudocode, on purpose:
    - a snippet that does not fit is left in its pool for a later sequence (sample_snippet would
      drop it), so every snippet is used exactly once;
    - no dangling <sep> before <cls> when the loop breaks;
    - label 0 only if a snippet of b actually made it in. The pseudocode can break before adding
      one (a's first snippet leaves no room); such a sequence holds one repository: label 1."""
    rng = np.random.default_rng(seed_)
    for r, ls in enumerate(lengths):
        for i, n in enumerate(ls):
            if n + 2 > max_len:
                raise ValueError(f"snippet {i} of repository {r} has {n} tokens: over max_len - 2 = {max_len - 2}")
    pools = [list(rng.permutation(len(ls))) for ls in lengths]  # drawn from the end: without replacement
    remaining = np.array([len(p) for p in pools], dtype=np.int64)
    plan = []

    def draw(weights):
        c = np.cumsum(weights)
        return int(np.searchsorted(c, rng.random() * c[-1], side='right'))

    while remaining.sum():
        a = draw(remaining)
        is_negative = rng.random() < 0.5
        others = remaining.copy()
        others[a] = 0
        b = draw(others) if is_negative and others.sum() else None
        items, n, label = [], 1, 1  # n counts the final <cls>
        while pools[a]:
            i = pools[a][-1]
            if n + 1 + lengths[a][i] > max_len:
                break
            items.append((a, pools[a].pop()))
            n += 1 + lengths[a][i]
            if b is not None and pools[b]:
                j = pools[b][-1]
                if n + 1 + lengths[b][j] > max_len:
                    break
                items.append((b, pools[b].pop()))
                n += 1 + lengths[b][j]
                label = 0
        remaining[a] = len(pools[a])
        if b is not None:
            remaining[b] = len(pools[b])
        plan.append((label, items))
    return plan


def assemble(items, snippets, sep_id, cls_id):
    """<sep> s1 <sep> s2 ... <cls> as uint32; snippets[repo][i] are token arrays."""
    parts = []
    for r, i in items:
        parts += [np.array([sep_id], np.uint32), snippets[r][i]]
    parts.append(np.array([cls_id], np.uint32))
    return np.concatenate(parts).astype(np.uint32)


# ----------------------------------------------------------------------------- MinHash

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
    """Near-deduplicate rows on several text columns (paper 5). A row is dropped when, in any
    column, it is a near-duplicate of the same column of a row kept before it (an LSH candidate
    whose estimated Jaccard >= threshold). columns: list of lists of texts, all of one length.
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


# ----------------------------------------------------------------------------- functions (fine-tuning data)

def extract_functions(source):
    """Every def of a Python source (methods and nested ones too), as dicts: name, qualname,
    lineno, end_lineno, original_string (the def without decorators, dedented, as CodeSearchNet),
    docstring (cleaned, '' if none). [] if the source does not parse."""
    import ast
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    lines = source.splitlines(keepends=True)
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # dedent by the def's own indentation (textwrap.dedent gives up when a string
                # literal inside has lines further left)
                pre = lines[child.lineno - 1][:child.col_offset]
                text = ''.join(line[len(pre):] if line.startswith(pre) else line
                               for line in lines[child.lineno - 1:child.end_lineno])
                out.append({'name': child.name, 'qualname': prefix + child.name, 'lineno': child.lineno,
                            'end_lineno': child.end_lineno, 'original_string': text,
                            'docstring': ast.get_docstring(child, clean=True) or ''})
                visit(child, prefix + child.name + '.')
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + '.')
            else:
                visit(child, prefix)
    visit(tree, '')
    return out


def first_paragraph(doc):
    return ' '.join(doc.strip().split('\n\n')[0].split())


def code_lines(code):
    return sum(1 for line in code.splitlines() if line.strip())


def csn_keep(f, code):
    """CodeSearchNet's filters (Husain et al. 2019, section 3.1) on a function with a docstring."""
    name = f['name']
    if 'test' in name.lower() or (name.startswith('__') and name.endswith('__')):
        return False
    query = first_paragraph(f['docstring'])
    return len(re.findall(r'\w+', query)) >= 3 and code_lines(code) >= 3


def _functions_of_file(task):
    """Worker: (repo, relpath, path or text) -> function dicts with repo, path and the file's git sha."""
    repo, rel, src = task
    if isinstance(src, tuple):
        text = src[1]
    else:
        text, why = read_source(src)
        if text is None:
            return []
    sha = hashlib.sha1(b'blob %d\0' % len(text.encode()) + text.encode()).hexdigest()
    out = extract_functions(text)
    for f in out:
        f.update(repo=repo, path=rel, sha=sha)
    return out


def collect_functions(repos):
    """All functions of the corpus's .py files, extracted in num_proc processes."""
    tasks = []
    for repo in sorted(repos):
        paths = [f for f in repos[repo] if not isinstance(f, tuple)]
        # a file's path in its repository: relative to the parent of the repository's common directory
        root = os.path.dirname(os.path.commonpath([os.path.dirname(p) for p in paths])) if paths else ''
        for f in repos[repo]:
            path = f[0] if isinstance(f, tuple) else f
            if path.endswith('.py'):
                tasks.append((repo, path if isinstance(f, tuple) else os.path.relpath(path, root), f))
    t0 = time.time()
    with mp.Pool(num_proc) as pool:
        funcs = [f for fs in pool.imap(_functions_of_file, tasks, chunksize=32) for f in fs]
    print0(f"functions: {len(funcs):,} from {len(tasks):,} Python files in {time.time() - t0:.1f}s")
    return funcs


def normalized(code):
    return ' '.join(code.split())


def _complete(d, settings):
    """True if directory d holds a manifest.json written with these settings."""
    try:
        with open(os.path.join(d, 'manifest.json')) as f:
            return json.load(f).get('settings') == settings
    except (OSError, ValueError):
        return False


def repository_splits(repos, fingerprint):
    """The one split of the corpus, by repository: {repository: 'train' | 'valid' | 'test'} by number
    of Python functions (heldout_fraction each for valid and test). Every stage keeps to it: a test
    repository is never pre-trained on (it is an ICC validation one) and the tokenizer is trained
    on the train split only. Returns (split, the functions or None, the record to write to
    out_dir/splits.json once every stage has succeeded, or None); reused from that file for this
    corpus and these settings, so that a rerun does not parse the corpus again."""
    settings = {'corpus_sha256': fingerprint, 'seed': seed, 'heldout_fraction': heldout_fraction}
    try:
        with open(os.path.join(out_dir, 'splits.json')) as f:
            saved = json.load(f)
        if saved.get('settings') == settings:
            return saved['splits'], None, None
    except (OSError, ValueError):
        pass
    funcs = collect_functions(repos)
    sizes = {}
    for f in funcs:
        sizes[f['repo']] = sizes.get(f['repo'], 0) + 1
    split_of = assign_splits(sizes, {'train': 1 - 2 * heldout_fraction, 'valid': heldout_fraction,
                                     'test': heldout_fraction}, seed)
    return split_of, funcs, {'settings': settings, 'splits': split_of}


def build_finetune(repos, which, source, fingerprint, split_of, funcs=None):
    """Retrieval pairs (+ CodeSearchNet-format copy) and BigCloneBench-format clone pairs from the
    Python functions of a corpus (`funcs`, collected here when None); `which` is a subset of
    {'retrieval', 'clone'}; `split_of` the repository split. Each output directory gets a
    manifest.json, written last; a rerun with the same settings reuses it."""
    from data import atomic_open, pair_row, simple_tokens, strip_docstring, write_json, write_pairs
    settings = {'source': source, 'corpus_sha256': fingerprint, 'seed': seed, 'heldout_fraction': heldout_fraction,
                'dedup_threshold': dedup_threshold}
    dirs = {'retrieval': os.path.join(out_dir, 'retrieval'), 'clone': os.path.join(out_dir, 'bigclonebench')}
    for w in list(which):
        if _complete(dirs[w], settings):
            print0(f"{w}: {dirs[w]} is complete and was built with these settings: reusing it")
            which = [x for x in which if x != w]
        elif os.path.exists(os.path.join(dirs[w], 'manifest.json')):
            os.remove(os.path.join(dirs[w], 'manifest.json'))  # being rebuilt: not complete until the end
    if not which:
        return {}
    rng = np.random.default_rng(seed)
    funcs = collect_functions(repos) if funcs is None else funcs
    if not funcs:
        raise ValueError("no Python functions found in the corpus: nothing to build fine-tuning pairs from")
    # exact duplicates (whitespace-normalised) form groups; MinHash on one member of each group
    group_of, reps = {}, []
    gid = []
    for k, f in enumerate(funcs):
        key = hashlib.sha1(normalized(f['original_string']).encode()).digest()
        if key not in group_of:
            group_of[key] = len(reps)
            reps.append([])
        reps[group_of[key]].append(k)
        gid.append(group_of[key])
    ok = [g for g, members in enumerate(reps)
          if code_lines(funcs[members[0]]['original_string']) >= 3 and 100 <= len(funcs[members[0]]['original_string']) <= 20000]
    t0 = time.time()
    sigs = minhash_signatures([funcs[reps[g][0]]['original_string'] for g in ok], num_proc)
    near = [(ok[i], ok[j], jac) for i, j, jac in near_duplicate_groups(sigs, dedup_threshold)]
    print0(f"minhash: {len(ok):,} distinct functions, {len(near):,} near-duplicate pairs (Jaccard >= {dedup_threshold}) "
        f"in {time.time() - t0:.1f}s ({len(ok) / max(time.time() - t0, 1e-9):,.0f} functions/s)")
    sig_of = {g: sigs[i] for i, g in enumerate(ok)}
    splits = ('train', 'valid', 'test')
    # union-find over near-duplicate groups: text-code keeps one function per component
    parent = list(range(len(reps)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for a, b, _ in near:
        parent[find(a)] = find(b)

    def url(f):
        return f"local://{f['repo']}/{f['path']}#L{f['lineno']}-L{f['end_lineno']}"

    counts = {}
    if 'retrieval' in which:
        text_code, csn, seen = {s: [] for s in splits}, {s: [] for s in splits}, set()
        for k, f in enumerate(funcs):
            if not f['docstring']:
                continue
            code = strip_docstring(f['original_string'])
            if not csn_keep(f, code) or find(gid[k]) in seen:
                continue
            seen.add(find(gid[k]))
            s, query = split_of[f['repo']], first_paragraph(f['docstring'])
            text_code[s].append(pair_row('text-code', query, None, code, 'python', f['repo'], url(f)))
            csn[s].append({'repo': f['repo'], 'path': f['path'], 'func_name': f['qualname'],
                           'original_string': f['original_string'], 'language': 'python',
                           'code': f['original_string'], 'code_tokens': simple_tokens(code),
                           'docstring': f['docstring'], 'docstring_tokens': simple_tokens(query),
                           'sha': f['sha'], 'url': url(f), 'partition': s})
        # each function in at most one code-code pair (a matching, most similar pairs first): a
        # cluster of many similar functions would otherwise fill batches with false negatives
        code_code, dropped, used = {s: [] for s in splits}, 0, set()
        for a, b, jac in sorted(near, key=lambda x: -x[2]):
            fa, fb = funcs[reps[a][0]], funcs[reps[b][0]]
            if split_of[fa['repo']] != split_of[fb['repo']]:
                dropped += 1
                continue
            if a in used or b in used or fa['name'] != fb['name']:
                continue  # same name: one function in two places, not look-alike siblings (pad_start/pad_end)
            ca, cb = strip_docstring(fa['original_string']), strip_docstring(fb['original_string'])
            if normalized(ca) == normalized(cb) or code_lines(ca) < 3 or code_lines(cb) < 3:
                continue
            if rng.random() < 0.5:
                fa, fb, ca, cb = fb, fa, cb, ca
            used.update((a, b))
            code_code[split_of[fa['repo']]].append(pair_row('code-code', ca, 'python', cb, 'python', fa['repo'],
                                                            f"{url(fa)}|{url(fb)}"))
        rdir = os.path.join(out_dir, 'retrieval')
        make_dir(rdir)
        for s in splits:
            write_pairs(os.path.join(rdir, f'{s}.jsonl'), text_code[s] + code_code[s])
            cdir = os.path.join(out_dir, 'codesearchnet', 'python', 'final', 'jsonl', s)
            make_dir(cdir)
            with atomic_open(os.path.join(cdir, f'python_{s}_0.jsonl.gz'), 'wt', encoding='utf-8') as fh:
                for r in csn[s]:
                    fh.write(json.dumps(r, ensure_ascii=False) + '\n')
            counts[f'retrieval/{s}'] = {'text-code': len(text_code[s]), 'code-code': len(code_code[s])}
            print0(f"retrieval {s}: {len(text_code[s]):,} text-code + {len(code_code[s]):,} code-code pairs, "
                f"{sum(1 for r in split_of.values() if r == s)} repositories")
        print0(f"retrieval: {dropped} near-duplicate pairs across two splits dropped")
        write_json(os.path.join(rdir, 'manifest.json'), {'format': 'mose-pairs', 'settings': settings,
                                                         'counts': {s: counts[f'retrieval/{s}'] for s in splits}})
    if 'clone' in which:
        pos, n_pos = {s: [] for s in splits}, {}
        for a, b, jac in sorted(near, key=lambda x: -x[2]):  # each function in at most 3 positive pairs
            fa, fb = reps[a][0], reps[b][0]
            if split_of[funcs[fa]['repo']] == split_of[funcs[fb]['repo']] and \
                    n_pos.get(a, 0) < 3 and n_pos.get(b, 0) < 3:
                pos[split_of[funcs[fa]['repo']]].append((fa, fb))
                n_pos[a], n_pos[b] = n_pos.get(a, 0) + 1, n_pos.get(b, 0) + 1
        for g in ok:  # identical copies in two files (type-1 clones): at most 3 pairs per group
            m = [k for k in reps[g]]
            copies = [(x, y) for x, y in zip(m, m[1:]) if (funcs[x]['repo'], funcs[x]['path']) !=
                      (funcs[y]['repo'], funcs[y]['path']) and split_of[funcs[x]['repo']] == split_of[funcs[y]['repo']]]
            for x, y in copies[:3]:
                pos[split_of[funcs[x]['repo']]].append((x, y))
        by_split = {s: [g for g in ok if split_of[funcs[reps[g][0]]['repo']] == s] for s in splits}
        bdir = os.path.join(out_dir, 'bigclonebench')
        make_dir(bdir)
        idx, lines = {}, {}
        for s in splits:
            negs, pool_ = set(), by_split[s]
            tries = 0
            while len(negs) < len(pos[s]) and len(pool_) > 1 and tries < 20 * len(pos[s]) + 100:
                tries += 1
                a, b = (int(x) for x in rng.choice(len(pool_), 2, replace=False))
                ga, gb = pool_[a], pool_[b]
                if (sig_of[ga] == sig_of[gb]).mean() < 0.3 and find(ga) != find(gb):
                    negs.add((reps[ga][0], reps[gb][0]))
            rows = [(x, y, 1) for x, y in pos[s]] + [(x, y, 0) for x, y in sorted(negs)]
            rng.shuffle(rows)
            lines[s] = []
            for x, y, lab in rows:
                for k in (x, y):
                    idx.setdefault(k, str(len(idx)))
                lines[s].append(f"{idx[x]}\t{idx[y]}\t{lab}\n")
            counts[f'bigclonebench/{s}'] = {'positive': len(pos[s]), 'negative': len(negs)}
            print0(f"clone {s}: {len(pos[s]):,} positive + {len(negs):,} negative pairs")
        with atomic_open(os.path.join(bdir, 'data.jsonl'), 'w', encoding='utf-8') as fh:
            for k, i in idx.items():
                fh.write(json.dumps({'func': funcs[k]['original_string'], 'idx': i}, ensure_ascii=False) + '\n')
        for s in splits:
            with atomic_open(os.path.join(bdir, f'{s}.txt'), 'w', encoding='utf-8') as fh:
                fh.writelines(lines[s])
        write_json(os.path.join(bdir, 'manifest.json'), {'format': 'bigclonebench', 'settings': settings,
                                                         'counts': {s: counts[f'bigclonebench/{s}'] for s in splits}})
    return counts


# ----------------------------------------------------------------------------- tokenizer

def train_corpus_bpe(repos, train_repos, fingerprint):
    """Train (or reuse) a byte-level BPE of bpe_vocab entries on the files of `train_repos`, at most
    bpe_bytes of them in seeded order, into out_dir/tokenizer/; returns that directory."""
    from data import write_json
    from tokenizer import train_bpe
    tdir = os.path.join(out_dir, 'tokenizer')
    settings = {'corpus_sha256': fingerprint, 'vocab_size': bpe_vocab, 'bytes': bpe_bytes, 'seed': seed,
                'repositories': len(train_repos)}
    if _complete(tdir, settings):
        print0(f"tokenizer: {tdir} was trained with these settings: reusing it")
        return tdir
    files = [f for r in train_repos for f in repos[r]]
    order = np.random.default_rng(seed).permutation(len(files))
    stats = {'files': 0, 'bytes': 0}

    def texts():
        for i in order:
            if stats['bytes'] >= bpe_bytes:
                return
            text = source_text(files[i])[0]
            if text:
                stats['files'] += 1
                stats['bytes'] += len(text.encode('utf-8'))
                yield text
    t0 = time.time()
    if os.path.exists(os.path.join(tdir, 'manifest.json')):
        os.remove(os.path.join(tdir, 'manifest.json'))  # being retrained: not complete until the end
    make_dir(tdir)
    tok = train_bpe(texts(), bpe_vocab, tdir)
    write_json(os.path.join(tdir, 'manifest.json'), {'format': 'bpe', 'settings': settings, 'stats': stats,
                                                     'repositories': sorted(train_repos)})
    print0(f"tokenizer: byte-level BPE of {bpe_vocab:,} entries (n_vocab {tok.n_vocab:,}) trained on {stats['files']:,} "
        f"files, {stats['bytes'] / 1e6:.1f} MB of {len(train_repos)} training repositories in {time.time() - t0:.1f}s")
    return tdir


# ----------------------------------------------------------------------------- ICC task

_TOK, _BUDGET = None, None


def snippet_budget():
    budget = snippet_len or (max_len - 3) // 2
    if not 1 <= budget <= max_len - 2:
        raise ValueError(f"snippet_len={snippet_len}: must be in [1, max_len - 2 = {max_len - 2}]")
    return budget


def _init_worker(name, budget):
    global _TOK, _BUDGET
    from tokenizer import get_tokenizer
    _TOK, _BUDGET = get_tokenizer(name), budget


def _tokenise_file(task):
    """Worker: (repo index, file index, path or (path, text)) -> (ri, fi, skip reason, bytes, snippets)."""
    ri, fi, src = task
    text, why = source_text(src)
    if text is None:
        return ri, fi, why, 0, []
    snippets = [np.array(s, dtype=np.uint32) for s in split_snippets(text, _TOK, _BUDGET)]
    return ri, fi, None, len(text.encode('utf-8')), snippets


def clean_icc_dir(icc_dir):
    """Remove what an interrupted or different build left: the manifest first (so the directory
    never looks complete while it is rewritten), then temp files and shards."""
    removed = 0
    if os.path.exists(os.path.join(icc_dir, 'manifest.json')):
        os.remove(os.path.join(icc_dir, 'manifest.json'))
    for name in sorted(os.listdir(icc_dir)):
        if name.endswith('.tmp') or re.fullmatch(r'(train|val)_\d{4}\.bin', name):
            os.remove(os.path.join(icc_dir, name))
            removed += 1
    if removed:
        print0(f"icc: removed {removed} files of an earlier incomplete or different build")


def run_icc(repos, source, fingerprint, held_out=()):
    from data import write_json, write_shard
    from tokenizer import get_tokenizer
    tok = get_tokenizer(tokenizer)
    icc_dir = os.path.join(out_dir, 'icc')
    make_dir(icc_dir)
    settings = {'source': source, 'corpus_sha256': fingerprint, 'tokenizer': tok.meta(),
                'max_len': max_len, 'snippet_len': snippet_budget(), 'val_fraction': val_fraction, 'seed': seed, 'shard_tokens': shard_tokens,
                'max_bytes': max_bytes, 'held_out': sorted(held_out)}
    mpath = os.path.join(icc_dir, 'manifest.json')
    if os.path.exists(mpath):
        try:
            with open(mpath) as f:
                if json.load(f).get('settings') == settings:
                    print0(f"icc: {mpath} is complete and was built with these settings: reusing it")
                    return
        except (OSError, ValueError):
            pass
    if max_len < 5:
        raise ValueError(f"max_len={max_len}: must be >= 5 (<sep> snippet <sep> snippet <cls>)")
    snippet_budget()
    clean_icc_dir(icc_dir)
    names = sorted(repos)
    tasks = [(ri, fi, f) for ri, r in enumerate(names) for fi, f in enumerate(repos[r])]
    snippets = [[None] * len(repos[r]) for r in names]
    skipped, n_bytes, n_tok, done = {}, 0, 0, 0
    t0 = last = time.time()
    with mp.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer, snippet_budget())) as pool:
        for ri, fi, why, nb, sn in pool.imap_unordered(_tokenise_file, tasks, chunksize=8):
            done += 1
            if why:
                skipped[why] = skipped.get(why, 0) + 1
            snippets[ri][fi] = sn
            n_bytes += nb
            n_tok += sum(len(s) for s in sn)
            now = time.time()
            if now - last > 1 or done == len(tasks):
                last, dt = now, max(now - t0, 1e-9)
                eta = (len(tasks) - done) / (done / dt)
                print(f"\rtokenise: {done:,}/{len(tasks):,} files ({done / dt:,.0f} files/s), {n_tok / 1e6:.1f}M tokens "
                      f"({n_tok / dt / 1e6:.2f}M tokens/s), {n_bytes / 1e6:.0f} MB, ETA {eta:.0f}s   ",
                      end='', file=sys.stderr, flush=True)
    print(file=sys.stderr)
    dt = time.time() - t0
    # flatten per repository, in file order; repositories with nothing usable are dropped
    flat = {r: [s for fs in snippets[ri] for s in fs] for ri, r in enumerate(names)}
    empty = [r for r in names if not flat[r]]
    flat = {r: v for r, v in flat.items() if v}
    n_files = sum(1 for ri in range(len(names)) for fs in snippets[ri] if fs)
    print0(f"icc: {len(flat):,} repositories, {n_files:,} files, {n_bytes / 1e6:,.1f} MB, {n_tok:,} tokens "
        f"in {dt:.1f}s ({n_tok / max(dt, 1e-9) / 1e6:.2f}M tokens/s on {num_proc} processes)")
    if skipped:
        print0("icc: skipped files: " + ', '.join(f"{v:,} {k}" for k, v in sorted(skipped.items())))
    if empty:
        print0(f"icc: {len(empty)} repositories with no usable file skipped" +
            (f" (e.g. {', '.join(empty[:3])})" if empty else ''))
    if not flat:
        raise ValueError(f"input {source}: no usable source file in any repository "
                         f"(extensions read: {', '.join(sorted(SOURCE_EXTS))})")
    split_of = assign_splits({r: sum(len(s) for s in v) for r, v in flat.items() if r not in held_out},
                             {'train': 1 - val_fraction, 'val': val_fraction}, seed)
    split_of.update({r: 'val' for r in flat if r in held_out})  # the retrieval test repositories: never pre-trained on
    manifest = {'format': 'mose-icc', 'version': 1, 'tokenizer': tok.meta(), 'max_len': max_len,
                'snippet_len': snippet_budget(), 'seed': seed,
                'splits': {}, 'val_repositories': sorted(r for r in flat if split_of[r] == 'val'),
                'max_token_id': 0, 'source': source, 'settings': settings, 'stats': {}}
    n_snip = sum(len(v) for v in flat.values())
    for si, split in enumerate(('train', 'val')):
        rs = [r for r in sorted(flat) if split_of[r] == split]
        plan = icc_plan([[len(s) for s in flat[r]] for r in rs], max_len, seed + si)
        shards, seqs, labels, n_seq_tok, k, tot, pos = [], [], [], 0, 0, 0, 0
        for label, items in plan:
            seq = assemble(items, [flat[r] for r in rs], tok.sep_id, tok.cls_id)
            seqs.append(seq)
            labels.append(label)
            n_seq_tok += len(seq)
            manifest['max_token_id'] = max(manifest['max_token_id'], int(seq.max()))
            if n_seq_tok >= shard_tokens:
                shards.append(f"{split}_{k:04d}.bin")
                write_shard(os.path.join(icc_dir, shards[-1]), seqs, labels)
                tot, pos, k = tot + n_seq_tok, pos + sum(labels), k + 1
                seqs, labels, n_seq_tok = [], [], 0
        if seqs:
            shards.append(f"{split}_{k:04d}.bin")
            write_shard(os.path.join(icc_dir, shards[-1]), seqs, labels)
            tot, pos = tot + n_seq_tok, pos + sum(labels)
        manifest['splits'][split] = {'shards': shards, 'sequences': len(plan), 'tokens': tot, 'repositories': len(rs),
                                     'positives': pos}
        if plan:
            print0(f"icc {split}: {len(rs):,} repositories, {len(plan):,} sequences, {tot:,} tokens, "
                f"mean length {tot / len(plan):,.0f}, label 0 (two repositories) {1 - pos / len(plan):.1%}")
    n_seqs = sum(v['sequences'] for v in manifest['splits'].values())
    packed = sum(v['tokens'] for v in manifest['splits'].values()) / max(n_seqs, 1)
    single = (n_tok + 2 * n_snip) / max(n_snip, 1)  # one snippet a sequence: <sep> snippet <cls>
    manifest['stats'] = {'repositories': len(flat), 'files': n_files, 'bytes': n_bytes, 'tokens': n_tok,
                         'snippets': n_snip, 'skipped_files': skipped, 'repositories_without_files': len(empty),
                         'mean_len_packed': packed, 'mean_len_single': single,
                         'tokenise_seconds': dt, 'tokens_per_s': n_tok / max(dt, 1e-9)}
    print0(f"icc: mean sequence length {packed:,.0f} tokens with ICC packing, {single:,.0f} without "
        f"(one snippet a sequence; paper 2.1: 1,300 vs 630)")
    write_json(mpath, manifest)  # last: its presence marks a complete dataset
    print0(f"icc: wrote {mpath}")


# ----------------------------------------------------------------------------- SynthCoNL, CSN, dedup bench

def run_synthconl(path):
    from data import load_synthconl, synthconl_to_pairs, write_pairs
    rows = load_synthconl(path, skip_bad_lines)
    print0(f"synthconl: {len(rows):,} rows from {path}")
    kept, st = minhash_dedup([[r['func1_CSN'] or '' for r in rows], [r['func2'] or '' for r in rows]],
                             dedup_threshold, num_proc)
    print0(f"synthconl: near-dedup removed {st['removed']:,} of {len(rows):,} rows ({st['removed'] / len(rows):.1%}), "
        f"{st['rows_per_s']:,.0f} rows/s")
    pairs = synthconl_to_pairs([rows[i] for i in kept])
    make_dir(os.path.join(out_dir, 'synthconl'))
    out = os.path.join(out_dir, 'synthconl', 'train.jsonl')
    write_pairs(out, pairs)
    print0(f"synthconl: wrote {len(pairs):,} pairs to {out}")


def run_codesearchnet(path):
    from data import load_codesearchnet, pair_row, write_pairs
    rows = load_codesearchnet(path, skip_bad=skip_bad_lines)
    pairs = [pair_row('text-code', r['query'], None, r['code'], r['language'], r['repo'], r['id'])
             for r in rows if r['query'].strip() and r['code'].strip()]
    make_dir(os.path.join(out_dir, 'retrieval'))
    out = os.path.join(out_dir, 'retrieval', 'codesearchnet.jsonl')
    write_pairs(out, pairs)
    print0(f"codesearchnet: wrote {len(pairs):,} text-code pairs (docstrings stripped from code) to {out}")


def is_codesearchnet(path):
    if os.path.isdir(path):
        import glob
        files = glob.glob(os.path.join(path, '**', '*.jsonl*'), recursive=True)
        return bool(files) and all(is_codesearchnet(f) for f in files[:1])
    if not path.endswith(('.jsonl', '.jsonl.gz')) or not os.path.isfile(path):
        return False
    from data import iter_jsonl
    for _, r in iter_jsonl(path, skip_bad=True):
        return 'docstring' in r and 'code' in r and 'url' in r
    return False


def lightly_edit(code, rng):
    """A near-copy: one identifier renamed everywhere (what SynthCoNL's duplicates look like, paper 5)."""
    names = sorted(set(re.findall(r'\b[a-z_][a-z0-9_]{2,}\b', code)))
    if not names:
        return code + '\n'
    old = names[int(rng.integers(len(names)))]
    return re.sub(rf'\b{old}\b', old + '_' + str(int(rng.integers(10))), code)


def run_dedup_bench(repos):
    """bench_rows SynthCoNL-format rows from real local functions: func1_CSN a function, func2 a
    light edit of it (half the rows) or another real function; real vendored copies add more."""
    rng = np.random.default_rng(seed)
    funcs = [f for f in collect_functions(repos) if code_lines(f['original_string']) >= 3]
    if not funcs:
        raise ValueError("dedup-bench: no Python functions in the corpus")
    order = rng.permutation(len(funcs))
    rows = []
    for k in range(bench_rows):
        f = funcs[order[k % len(funcs)]]
        g = funcs[int(rng.integers(len(funcs)))]
        code1 = f['original_string'] if k < len(funcs) else lightly_edit(f['original_string'], rng)
        func2 = lightly_edit(code1, rng) if rng.random() < 0.5 else g['original_string']
        rows.append({'repository_name': f['repo'], 'func_path_in_repository': f['path'], 'language2': 'python',
                     'func2': func2, 'language1_CSN': 'python', 'func1_CSN': code1,
                     'func_documentation_string': first_paragraph(f['docstring']),
                     'func_code_url': f"local://{f['repo']}/{f['path']}#L{f['lineno']}"})
    print0(f"dedup-bench: {len(rows):,} rows from {len(funcs):,} functions; hashing on {num_proc} processes")
    kept, st = minhash_dedup([[r['func1_CSN'] for r in rows], [r['func2'] for r in rows]], dedup_threshold, num_proc)
    print0(f"dedup-bench: removed {st['removed']:,} of {len(rows):,} rows ({st['removed'] / len(rows):.1%}) in "
        f"{st['seconds']:.1f}s: {st['rows_per_s']:,.0f} rows/s (MinHash LSH, 256 permutations, 5-grams, "
        f"threshold {dedup_threshold})")
    return st


# ----------------------------------------------------------------------------- main

if __name__ == '__main__':
    exec(open('configurator.py').read())
    TASKS = ('all', 'icc', 'retrieval', 'clone', 'synthconl', 'dedup-bench')
    t_start = time.time()
    try:
        if task not in TASKS:
            raise ValueError(f"--task={task!r}: expected one of {', '.join(TASKS)}")
        if not 0 <= val_fraction < 1 or not 0 <= heldout_fraction < 0.5:
            raise ValueError("val_fraction must be in [0, 1) and heldout_fraction in [0, 0.5)")
        make_dir(out_dir)
        if task == 'synthconl':
            if not input:
                raise ValueError("--task=synthconl needs --input=<SynthCoNL .parquet/.jsonl file or directory>")
            run_synthconl(input)
        elif task == 'retrieval' and input and is_codesearchnet(input):
            run_codesearchnet(input)
        else:
            repos, source = load_corpus(input)
            if not repos or not any(repos.values()):
                raise ValueError(f"input {source}: empty corpus (no repository with source files)")
            repos = cap_corpus(repos, max_bytes, seed)
            fingerprint = corpus_fingerprint(repos)
            split_of, funcs, record = repository_splits(repos, fingerprint) if task != 'dedup-bench' else ({}, None, None)
            if bpe_vocab:
                tokenizer = train_corpus_bpe(repos, [r for r in sorted(repos) if split_of.get(r, 'train') == 'train'],
                                             fingerprint)
            if task in ('all', 'icc'):
                run_icc(repos, source, fingerprint, {r for r, sp in split_of.items() if sp == 'test'})
            if task in ('all', 'retrieval', 'clone'):
                build_finetune(repos, {'all': ('retrieval', 'clone')}.get(task, (task,)), source, fingerprint,
                               split_of, funcs)
            if task == 'dedup-bench':
                run_dedup_bench(repos)
            if record:
                from data import write_json
                write_json(os.path.join(out_dir, 'splits.json'), record)
    except (ValueError, FileNotFoundError, ImportError, OSError, RuntimeError) as e:
        fail(e)
    print0(f"done in {time.time() - t_start:.1f}s")
