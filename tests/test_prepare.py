"""
prepare.py tests (CPU, hermetic, tiny corpora in tmp_path):  python -m pytest tests/test_prepare.py -q

Pure functions are imported; the stage itself runs as a subprocess, as a user runs it.
"""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import data
import dedup
import icc
import sources
from tokenizer import get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDLIB = sysconfig.get_paths()['stdlib']


def run_prepare(*args, cwd=ROOT):
    r = subprocess.run([sys.executable, 'prepare.py', *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


# ----------------------------------------------------------------------------- snippets

@pytest.mark.parametrize('rel,budget', [('json/decoder.py', 4000), ('argparse.py', 500), ('argparse.py', 100),
                                        ('heapq.py', 30)])
def test_split_snippets(rel, budget):
    tok = get_tokenizer()
    text = open(os.path.join(STDLIB, rel), encoding='utf-8').read()
    parts = icc.split_snippets(text, tok, budget)
    assert all(0 < len(p) <= budget for p in parts)
    assert ''.join(tok.decode(p) for p in parts) == text  # nothing lost, nothing doubled
    if len(tok.encode(text)) <= budget:
        assert parts == [tok.encode(text)]
    elif max(len(tok.encode(line)) for line in text.splitlines(keepends=True)) < budget - 16:
        # every line fits: cut at line boundaries only, every part but the last ends with a newline
        assert len(parts) > 1 and all(tok.decode(p).endswith('\n') for p in parts[:-1])


def test_split_snippets_single_long_line():
    tok = get_tokenizer()
    text = 'x = [' + ', '.join(str(i) for i in range(500)) + ']'
    parts = icc.split_snippets(text, tok, 64)
    assert all(len(p) <= 64 for p in parts) and sum(parts, []) == tok.encode(text)


# ----------------------------------------------------------------------------- ICC sequences (Fig. 2)

def random_lengths(n_repos, seed, lo=5, hi=300):
    rng = np.random.default_rng(seed)
    return [rng.integers(lo, hi, size=int(rng.integers(1, 40))).tolist() for _ in range(n_repos)]


@pytest.mark.parametrize('max_len,seed', [(1024, 0), (2048, 1), (512, 2)])
def test_icc_plan_and_assemble(max_len, seed):
    lengths = random_lengths(60, seed)
    plan = icc.icc_plan(lengths, max_len, seed)
    used = [x for _, items in plan for x in items]
    assert sorted(used) == sorted((r, i) for r, ls in enumerate(lengths) for i in range(len(ls)))  # each once
    # fake snippets whose tokens encode their provenance: token = 1000 * repo + index
    snippets = [[np.full(n, 1000 * r + i, np.uint32) for i, n in enumerate(ls)] for r, ls in enumerate(lengths)]
    SEP, CLS = 10 ** 6, 10 ** 6 + 1
    n0 = 0
    for label, items in plan:
        seq = icc.assemble(items, snippets, SEP, CLS)
        assert seq.dtype == np.uint32 and len(seq) <= max_len
        assert seq[0] == SEP and seq[-1] == CLS and (seq == CLS).sum() == 1
        # split at <sep>: each piece is exactly one snippet, in plan order
        cuts = np.flatnonzero(seq == SEP)
        pieces = [seq[a + 1:b] for a, b in zip(cuts, list(cuts[1:]) + [len(seq) - 1])]
        assert [(int(p[0]) // 1000, int(p[0]) % 1000) for p in pieces] == items
        assert all(len(p) == lengths[r][i] for p, (r, i) in zip(pieces, items))
        repos = {r for r, _ in items}
        if label == 1:
            assert len(repos) == 1
        else:
            n0 += 1
            assert len(repos) == 2
            a = items[0][0]  # interleaved a, b, a, b, ...
            assert all((r == a) == (k % 2 == 0) for k, (r, _) in enumerate(items[:2 * min(
                sum(r == a for r, _ in items), sum(r != a for r, _ in items))]))
    assert 0.35 < n0 / len(plan) < 0.6  # paper 2.1: 50% of sequences mix two repositories
    assert icc.icc_plan(lengths, max_len, seed) == plan  # deterministic


def test_icc_plan_label_when_second_repo_never_fits():
    # every snippet fills the sequence: the pseudocode breaks before any snippet of b -> label 1
    plan = icc.icc_plan([[98] * 5, [98] * 5, [98] * 3], 100, 0)
    assert len(plan) == 13 and all(label == 1 and len(items) == 1 for label, items in plan)
    with pytest.raises(ValueError, match="over max_len - 2 = 98"):
        icc.icc_plan([[99]], 100, 0)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_assign_splits_by_repository(seed):
    sizes = {f'r{i}': int(s) for i, s in enumerate(np.random.default_rng(seed).integers(1, 100, 50))}
    sizes['huge'] = 10_000
    fr = {'train': 0.8, 'valid': 0.1, 'test': 0.1}
    out = sources.assign_splits(sizes, fr, seed)
    assert set(out) == set(sizes) and set(out.values()) == set(fr)  # each repository in exactly one split
    assert out['huge'] == 'train'
    assert out == sources.assign_splits(sizes, fr, seed)
    small = {r: s for r, s in sizes.items() if r != 'huge'}
    out = sources.assign_splits(small, fr, seed)
    share = sum(s for r, s in small.items() if out[r] == 'valid') / sum(small.values())
    assert 0.05 < share < 0.15
    assert set(sources.assign_splits({'a': 1, 'b': 1}, {'train': 0.95, 'val': 0.05}, seed).values()) == {'train', 'val'}


# ----------------------------------------------------------------------------- MinHash

def test_minhash_signature_equals_datasketch():
    from datasketch import MinHash
    text = open(os.path.join(STDLIB, 'heapq.py'), encoding='utf-8').read()[:3000]
    m = MinHash(num_perm=256, seed=1, hashfunc=int)
    m.update_batch([int(h) for h in dedup.shingle_hashes(text)])
    assert np.array_equal(dedup.minhash_signature(text), m.hashvalues)


def grams(t, k=5):
    return {t[i:i + k] for i in range(len(t) - k + 1)}


@pytest.mark.parametrize('edit', [0.02, 0.1, 0.3, 0.6])
def test_minhash_estimates_jaccard(edit):
    rng = np.random.default_rng(0)
    a = open(os.path.join(STDLIB, 'bisect.py'), encoding='utf-8').read()
    chars = list(a)
    for i in rng.choice(len(chars), int(edit * len(chars) / 5), replace=False):
        chars[i] = chr(0x4e00 + int(rng.integers(500)))  # each edit breaks up to 5 grams
    b = ''.join(chars)
    exact = len(grams(a) & grams(b)) / len(grams(a) | grams(b))
    est = (dedup.minhash_signature(a) == dedup.minhash_signature(b)).mean()
    assert abs(est - exact) < 0.08


FUNC = '''def merge_sorted(left, right):
    result, i, j = [], 0, 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            result.append(left[i])
            i += 1
        else:
            result.append(right[j])
            j += 1
    result.extend(left[i:])
    result.extend(right[j:])
    return result
'''
OTHER = '''def parse_header(line):
    key, sep, value = line.partition(":")
    if not sep:
        raise ValueError("no colon in header line: %r" % line)
    return key.strip().lower(), value.strip()
'''
THIRD = '''class Stack:
    def __init__(self):
        self.items = []
    def push(self, x):
        self.items.append(x)
    def pop(self):
        return self.items.pop()
'''


def test_minhash_dedup_rows():
    near = FUNC.replace('result', 'out')  # an identifier renamed: a near duplicate
    col1 = [FUNC, OTHER, FUNC, near, THIRD, OTHER + '\n']
    col2 = ['a ' * 20, 'b ' * 20, 'c ' * 20, 'd ' * 20, 'b ' * 20, 'e ' * 20]
    kept, st = dedup.minhash_dedup([col1, col2], 0.7)
    # row 2 exact copy of row 0, row 3 near copy, row 4 repeats row 1's second column, row 5 ~ row 1
    assert kept == [0, 1] and st['removed'] == 4
    assert dedup.minhash_dedup([col1, col2], 0.7, procs=2, chunk=2)[0] == kept  # chunks hashed by workers
    kept, _ = dedup.minhash_dedup([[FUNC, OTHER, THIRD], ['x1 ' * 9, 'y2 ' * 9, 'z3 ' * 9]], 0.7)
    assert kept == [0, 1, 2]  # distinct rows are all kept


def test_minhash_dedup_threshold_semantics():
    half = FUNC[:len(FUNC) // 2] + OTHER  # shares about half its grams with FUNC
    exact = len(grams(FUNC) & grams(half)) / len(grams(FUNC) | grams(half))
    assert 0.2 < exact < 0.6
    assert dedup.minhash_dedup([[FUNC, half]], 0.7)[0] == [0, 1]
    assert dedup.minhash_dedup([[FUNC, half]], exact - 0.15)[0] == [0]


# ----------------------------------------------------------------------------- held-out near-duplicates

def test_drop_heldout_near_duplicates():
    """A valid / test function that is a copy or a near-duplicate of a training function is dropped
    from its split and counted, and so is a valid function that near-duplicates a test function;
    the test function, and training functions, are kept."""
    from decontaminate import drop_heldout_near_duplicates
    near = FUNC.replace('    return result', '    # keep the order of equal keys\n    return result')
    rows = [('t', FUNC), ('t', THIRD), ('v', '\n\n' + FUNC.replace('    ', '\t')),  # an exact copy, re-indented
            ('s', near), ('v', OTHER), ('s', OTHER.replace('raise', '  raise')), ('s', THIRD + '# end\n'),
            ('t', THIRD.replace('items', 'elements'))]
    funcs = [{'original_string': code, 'language': 'python', 'repo': repo} for repo, code in rows]
    groups = dedup.function_groups(funcs, 0.7, 1)
    where = [{'t': 'train', 'v': 'valid', 's': 'test'}[f['repo']] for f in funcs]
    assert drop_heldout_near_duplicates(funcs, groups, where) == {'valid': 1, 'test': 2, 'valid_of_test': 1}
    assert where == ['train', 'train', None, None, None, 'test', None, 'train']


PLANTED = '''def merge_sorted_runs(left, right):
    """Merge two sorted lists into one sorted list, keeping equal keys in their order."""
    merged, i, j = [], 0, 0
    while i < len(left) and j < len(right):
        if right[j] < left[i]:
            merged.append(right[j])
            j += 1
        else:
            merged.append(left[i])
            i += 1
    merged.extend(left[i:])
    merged.extend(right[j:])
    return merged  # {tag}
'''


# ----------------------------------------------------------------------------- NSP pairs (paper 6.3's baseline)

@pytest.mark.parametrize('seed', [0, 1])
def test_nsp_plan(seed):
    rng = np.random.default_rng(seed)
    files = [rng.integers(1, 6, size=int(rng.integers(1, 12))).tolist() for _ in range(30)]  # snippets per file
    plan = icc.nsp_plan(files, seed)
    file_of = [[f for f, c in enumerate(counts) for _ in range(c)] for counts in files]  # repo -> snippet -> file
    firsts = sorted((r, i) for r in range(len(files)) for i in range(len(file_of[r]) - 1)
                    if file_of[r][i] == file_of[r][i + 1])
    assert sorted(items[0] for _, items in plan) == firsts  # every snippet with a successor opens one pair
    for label, ((ra, a), (rb, b)) in plan:
        assert len(plan[0][1]) == 2
        if label == 1:  # the next snippet of the same file
            assert rb == ra and b == a + 1 and file_of[ra][a] == file_of[rb][b]
        else:  # a snippet of another repository
            assert rb != ra and 0 <= b < len(file_of[rb])
    n, pos = len(plan), sum(l for l, _ in plan)
    assert abs(pos - n / 2) < 4 * (n / 4) ** 0.5  # label 1 with probability 1/2
    assert icc.nsp_plan(files, seed) == plan


def test_nsp_negatives_are_uniform_over_snippets():
    """A negative's b is any snippet of the other repositories with equal probability: a repository
    of 90 snippets is drawn ~9x as often as one of 10 (a chi-square test, scipy as the reference)."""
    from scipy.stats import chisquare
    files = [[2] * 200, [1] * 90, [1] * 10]  # only repository 0 has pairs; 1 and 2 are drawn as b
    plan = icc.nsp_plan(files, 0)
    drawn = np.bincount([rb for l, (_, (rb, _)) in plan if l == 0], minlength=3)
    assert drawn[0] == 0 and chisquare(drawn[1:], drawn[1:].sum() * np.array([0.9, 0.1])).pvalue > 1e-3


def test_nsp_plan_needs_pairs_and_two_repositories():
    with pytest.raises(ValueError, match='no file of two or more snippets'):
        icc.nsp_plan([[1, 1], [1]], 0)
    with pytest.raises(ValueError, match='one repository'):
        icc.nsp_plan([[3, 2]], 0)


# ----------------------------------------------------------------------------- the stage, end to end

@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    """Real stdlib packages copied as repositories, plus a vendored near-copy, a repository with
    nothing usable, and two near-copies of PLANTED in every repository (vendored code)."""
    d = tmp_path_factory.mktemp('corpus')
    for p in ('json', 'html', 'wsgiref', 'xmlrpc', 'urllib', 'http', 'logging', 'sqlite3'):
        shutil.copytree(os.path.join(STDLIB, p), d / p, ignore=shutil.ignore_patterns('__pycache__'))
    os.makedirs(d / 'vendored' / 'json')
    for f in ('decoder.py', 'encoder.py'):
        src = open(os.path.join(STDLIB, 'json', f), encoding='utf-8').read()
        (d / 'vendored' / 'json' / f).write_text(src.replace('self', 'this'))
    for p in ('json', 'html', 'wsgiref', 'xmlrpc', 'urllib', 'http', 'logging', 'sqlite3', 'vendored'):
        for i in range(2):
            (d / p / f'sortutil{i}.py').write_text(PLANTED.format(tag=f'copy {i} of {p}'))
    os.makedirs(d / 'assets')
    (d / 'assets' / 'logo.c').write_bytes(b'\x89PNG\0\0binary')
    (d / 'README.md').write_text('not a repository')
    return d


def build_args(corpus, out):
    return [f'--input={corpus}', f'--out_dir={out}', '--max_len=512', '--val_fraction=0.2', '--heldout_fraction=0.2',
            '--num_proc=2', '--decontaminate=']


@pytest.fixture(scope='module')
def built(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp('out')
    rc, so, se = run_prepare(*build_args(corpus, out))
    assert rc == 0, se
    return out, so


def test_icc_end_to_end(built):
    out, so = built
    tok = get_tokenizer()
    m = json.load(open(out / 'icc' / 'manifest.json'))
    assert m['format'] == 'mose-icc' and m['tokenizer'] == tok.meta() and m['max_len'] == 512
    assert 'repositories with no usable file skipped' in so and '1 binary' in so
    assert m['stats']['repositories'] == 9 and m['stats']['mean_len_packed'] >= m['stats']['mean_len_single']
    assert m['splits']['train']['repositories'] + m['splits']['val']['repositories'] == 9
    assert len(m['val_repositories']) == m['splits']['val']['repositories'] >= 1
    for split in ('train', 'val'):
        ds = data.load_icc(str(out), split, tok_meta=tok, vocab_size=tok.n_vocab)
        assert len(ds) == m['splits'][split]['sequences'] and ds.lengths.max() <= 512
        for i in range(0, len(ds), 7):
            seq, label = ds.get(i)
            assert seq[0] == tok.sep_id and seq[-1] == tok.cls_id and (seq == tok.cls_id).sum() == 1
    # every token of every snippet, one <sep> per snippet, one <cls> per sequence: nothing lost or added
    assert m['stats']['tokens'] + m['stats']['snippets'] + m['splits']['train']['sequences'] + \
        m['splits']['val']['sequences'] == sum(v['tokens'] for v in m['splits'].values())


def test_icc_rerun_reuses_and_interrupted_run_is_cleaned(built, corpus):
    out, _ = built
    args = build_args(corpus, out) + ['--task=icc']
    rc, so, se = run_prepare(*args[:-1])  # task=all: every part is reused
    assert rc == 0 and so.count('reusing it') == 3 and 'tokenise' not in se and 'functions:' not in so
    icc = out / 'icc'
    before = json.load(open(icc / 'manifest.json'))
    # an interrupted run: manifest gone, a temp file and a stray shard left
    os.remove(icc / 'manifest.json')
    (icc / 'train_0000.bin.tmp').write_bytes(b'half written')
    (icc / 'train_0009.bin').write_bytes(b'stale')
    rc, so, se = run_prepare(*args)
    assert rc == 0 and 'removed' in so
    names = sorted(os.listdir(icc))
    assert not [n for n in names if n.endswith('.tmp')] and 'train_0009.bin' not in names
    after = json.load(open(icc / 'manifest.json'))
    assert after['splits'] == before['splits']  # same data again
    assert sorted(n for n in names if n.endswith('.bin')) == sorted(
        s for v in after['splits'].values() for s in v['shards'])


def test_sample_files_keeps_a_share_of_every_repository():
    repos = {'a': [f'a{i}' for i in range(10)], 'b': ['b0'], 'c': [f'c{i}' for i in range(7)]}
    assert icc.sample_files(repos, 1.0, 0) is repos
    got = icc.sample_files(repos, 0.3, 5)
    assert {r: len(v) for r, v in got.items()} == {'a': 3, 'b': 1, 'c': 3}  # ceil(0.3 n): no repository lost
    for r, v in got.items():
        assert set(v) <= set(repos[r]) and v == sorted(v, key=repos[r].index)  # file order kept
    assert got == icc.sample_files(repos, 0.3, 5) and any(
        icc.sample_files(repos, 0.3, s) != got for s in range(6, 12))  # seeded: the same draw, another seed another


def test_icc_file_fraction(built, corpus, tmp_path):
    """--icc_file_fraction=0.5 tokenises about half of the files: fewer tokens, every repository
    with a usable file still in the split, and a rerun at the full share rebuilds."""
    out_full, _ = built
    full = json.load(open(out_full / 'icc' / 'manifest.json'))
    out = tmp_path / 'half'
    rc, so, se = run_prepare(*build_args(corpus, out), '--task=icc', '--icc_file_fraction=0.5')
    assert rc == 0, se
    half = json.load(open(out / 'icc' / 'manifest.json'))
    assert re.search(r'icc: \d+ of \d+ files tokenised \(icc_file_fraction=0.5\)', so)
    assert half['settings']['file_fraction'] == 0.5 and 'file_fraction' not in full['settings']
    assert 0.3 * full['stats']['files'] < half['stats']['files'] < 0.7 * full['stats']['files']
    assert 0.2 * full['stats']['tokens'] < half['stats']['tokens'] < 0.8 * full['stats']['tokens']
    assert half['stats']['repositories'] == full['stats']['repositories']
    rc, so, se = run_prepare(*build_args(corpus, out), '--task=icc')
    assert rc == 0 and 'reusing it' not in so
    assert json.load(open(out / 'icc' / 'manifest.json'))['stats']['tokens'] == full['stats']['tokens']


@pytest.mark.parametrize('value', ['0', '1.5', '-0.1'])
def test_bad_icc_file_fraction(tmp_path, value):
    rc, so, se = run_prepare(f'--input={tmp_path}', f'--out_dir={tmp_path / "out"}', f'--icc_file_fraction={value}')
    assert rc == 1 and f'--icc_file_fraction={float(value)}: expected a share of the files in (0, 1]' in se
    assert 'Traceback' not in se and not (tmp_path / 'out').exists()


def test_nsp_end_to_end(built, corpus):
    """--task=nsp: <sep> a <sep> b <cls>, one pair a sequence, from the same snippets and splits as
    ICC; a label-1 pair decodes to text that follows on in one file, a label-0 pair to snippets of
    two repositories (checked against the corpus files, not the plan)."""
    out, _ = built
    rc, so, se = run_prepare(*build_args(corpus, out), '--task=nsp')
    assert rc == 0, se
    tok = get_tokenizer()
    m, mi = (json.load(open(out / d / 'manifest.json')) for d in ('nsp', 'icc'))
    assert m['objective'] == 'nsp' and mi['objective'] == 'icc' and m['val_repositories'] == mi['val_repositories']
    assert m['stats']['tokens'] == mi['stats']['tokens']  # the same snippets
    assert m['stats']['pad_share'] == pytest.approx(1 - m['stats']['mean_len_packed'] / 512)
    texts = {}
    for p in sorted(corpus.rglob('*.py')):
        texts.setdefault(p.relative_to(corpus).parts[0], []).append(p.read_text(encoding='utf-8', errors='replace'))
    repo_of = lambda snippet: {r for r, ts in texts.items() if any(snippet in t for t in ts)}
    ds = data.load_icc(str(out / 'nsp'), 'train', tok_meta=tok, vocab_size=tok.n_vocab)
    labels = [ds.get(i)[1] for i in range(len(ds))]
    assert 0.3 < np.mean(labels) < 0.7
    checked = {0: 0, 1: 0}
    for i in range(0, len(ds), max(1, len(ds) // 60)):
        seq, label = ds.get(i)
        assert seq[0] == tok.sep_id and seq[-1] == tok.cls_id and (seq == tok.sep_id).sum() == 2
        cut = int(np.flatnonzero(seq == tok.sep_id)[1])
        a, b = tok.decode(seq[1:cut].tolist()), tok.decode(seq[cut + 1:-1].tolist())
        if label == 1:
            assert any(a + b in t for ts in texts.values() for t in ts)
        elif len(a) > 200 and len(b) > 200:  # long enough to name its repository
            assert not repo_of(a) & repo_of(b)
        checked[label] += 1
    assert min(checked.values()) >= 10
    rc, so, se = run_prepare(*build_args(corpus, out), '--task=nsp')
    assert rc == 0 and 'nsp: ' in so and 'reusing it' in so


def test_one_repository_split_for_every_stage(built):
    """The retrieval test repositories are ICC validation repositories: pre-training never reads a
    test function (with its docstring, the query)."""
    out, _ = built
    icc_val = set(json.load(open(out / 'icc' / 'manifest.json'))['val_repositories'])
    test_repos = {r['repo'] for r in data.read_pairs(str(out / 'retrieval' / 'test.jsonl'))}
    assert test_repos and test_repos <= icc_val
    splits = json.load(open(out / 'splits.json'))['splits']
    assert {r for r, s in splits.items() if s == 'test'} >= test_repos


def test_bpe_trained_on_training_repositories(corpus, tmp_path):
    """--bpe_vocab trains a BPE on the training split's files and builds every output with it."""
    out = tmp_path / 'out'
    rc, so, se = run_prepare(*build_args(corpus, out), '--bpe_vocab=600', '--task=icc')
    assert rc == 0, se
    tok = get_tokenizer(str(out / 'tokenizer'))
    assert tok.n_vocab == 604
    m = json.load(open(out / 'icc' / 'manifest.json'))
    assert m['tokenizer'] == tok.meta()
    trained = json.load(open(out / 'tokenizer' / 'manifest.json'))
    splits = json.load(open(out / 'splits.json'))['splits']
    assert {r for r, s in splits.items() if s == 'train'} <= set(trained['repositories'])
    assert not {r for r, s in splits.items() if s != 'train'} & set(trained['repositories'])
    assert 'byte-level BPE of 600 entries' in so
    rc, so, _ = run_prepare(*build_args(corpus, out), '--bpe_vocab=600', '--task=icc')
    assert rc == 0 and 'tokenizer: ' in so and 'reusing it' in so


def test_finetune_outputs(built):
    out, so = built
    splits = ('train', 'valid', 'test')
    repos = {}
    for s in splits:
        rows = data.read_pairs(str(out / 'retrieval' / f'{s}.jsonl')) if (out / 'retrieval' / f'{s}.jsonl').stat().st_size else []
        repos[s] = {r['repo'] for r in rows}
        for r in rows:
            assert r['code_lang'] == 'python'
            if r['kind'] == 'text-code':
                assert r['query'] not in r['code'] and r['query_lang'] is None
        csn = data.load_codesearchnet(str(out / 'codesearchnet' / 'python' / 'final' / 'jsonl' / s)) \
            if any(r['kind'] == 'text-code' for r in rows) else []
        raw = [json.loads(l) for l in __import__('gzip').open(
            out / 'codesearchnet' / 'python' / 'final' / 'jsonl' / s / f'python_{s}_0.jsonl.gz', 'rt')]
        assert len(csn) == len(raw) == sum(r['kind'] == 'text-code' for r in rows)
        for r, c in zip(raw, csn):
            assert set(data.CSN_FIELDS) <= set(r) and r['partition'] == s and r['code'] == r['original_string']
            assert ast.get_docstring(ast.parse(r['code']).body[0]) == r['docstring']  # CSN keeps it in code
            assert ast.get_docstring(ast.parse(c['code']).body[0]) is None  # the loader strips it
    assert not (repos['train'] & repos['valid']) and not (repos['train'] & repos['test']) \
        and not (repos['valid'] & repos['test'])
    assert sum(len(v) for v in repos.values()) >= 5
    n_cc = sum(r['kind'] == 'code-code' for s in splits for r in data.read_pairs(str(out / 'retrieval' / f'{s}.jsonl')))
    assert n_cc > 0
    total_pos = 0
    for s in splits:
        if not (out / 'bigclonebench' / f'{s}.txt').stat().st_size:
            continue
        funcs, pairs, skipped = data.load_bigclonebench(str(out / 'bigclonebench'), s)
        assert skipped == 0
        pos = sum(lab for _, _, lab in pairs)
        assert pos == len(pairs) - pos  # balanced
        total_pos += pos
    assert total_pos > 0


def test_heldout_near_duplicates_of_training_functions_dropped(built):
    """The copies of PLANTED in valid and test repositories near-duplicate those in training ones:
    no held-out output holds one (each held-out repository has two, which would otherwise make a
    held-out code-code and clone pair), the training outputs do, and the drop is counted per split."""
    out, so = built
    splits = json.load(open(out / 'splits.json'))['splits']
    n_repos = {s: sum(1 for r, sp in splits.items() if sp == s and r != 'assets') for s in ('valid', 'test')}
    assert n_repos['valid'] >= 1 and n_repos['test'] >= 1
    line = next(l for l in so.splitlines() if l.startswith('heldout: dropped'))
    m = re.search(r'([\d,]+) valid and ([\d,]+) test functions, .* ([\d,]+) valid functions of a test function', line)
    counts = dict(zip(('valid', 'test', 'valid_of_test'), (int(n.replace(',', '')) for n in m.groups())))
    assert counts['valid'] >= 2 * n_repos['valid'] and counts['test'] >= 2 * n_repos['test']
    for d in ('retrieval', 'bigclonebench'):
        assert json.load(open(out / d / 'manifest.json'))['heldout_near_duplicates'] == counts
    bcb = {json.loads(l)['idx']: json.loads(l)['func'] for l in open(out / 'bigclonebench' / 'data.jsonl')}
    for s in ('train', 'valid', 'test'):
        rows = data.read_pairs(str(out / 'retrieval' / f'{s}.jsonl'))
        planted = [r for r in rows if 'merged.extend(left[i:])' in r['code']]
        clones = [l.split('\t') for l in open(out / 'bigclonebench' / f'{s}.txt')]
        planted_clones = [c for c in clones if 'merged.extend' in bcb[c[0]] + bcb[c[1]]]
        if s == 'train':
            assert {r['kind'] for r in planted} == {'text-code', 'code-code'} and planted_clones
            assert all(splits[r['repo']] == 'train' for r in planted)
        else:
            assert not planted and not planted_clones, s


# ----------------------------------------------------------------------------- bad input

def test_malformed_jsonl_corpus(tmp_path):
    p = tmp_path / 'stack.jsonl'
    rows = [{'repo_name': f'o/r{i % 3}', 'path': f'f{i}.py', 'content': f'def f{i}(x):\n    return x * {i}\n'}
            for i in range(12)]
    lines = [json.dumps(r) for r in rows]
    lines[4] = lines[4][:-3]
    p.write_bytes(('\n'.join(lines) + '\n').encode() + b'{"repo_name": "o/r1", "content": "x = \xff\xfe 1"}\n')
    rc, so, se = run_prepare(f'--input={p}', f'--out_dir={tmp_path / "out"}', '--task=icc', '--max_len=64')
    assert rc == 1 and se.strip().splitlines()[-1].startswith(f'error: {p}:5: malformed JSON')
    assert 'Traceback' not in se and not (tmp_path / 'out' / 'icc' / 'manifest.json').exists()
    rc, so, se = run_prepare(f'--input={p}', f'--out_dir={tmp_path / "out"}', '--task=icc', '--max_len=64',
                             '--skip_bad_lines=true', '--val_fraction=0.3')
    assert rc == 0, se
    assert 'skipped 1 malformed lines; replaced undecodable bytes in 1 lines' in so
    m = json.load(open(tmp_path / 'out' / 'icc' / 'manifest.json'))
    assert m['stats']['files'] == 12 and m['stats']['repositories'] == 3


@pytest.mark.parametrize('case', ['empty_dir', 'no_usable', 'missing_field', 'missing_input', 'bad_task',
                                  'bad_languages'])
def test_bad_corpus_errors(tmp_path, case):
    inp = tmp_path / 'in'
    if case == 'empty_dir':
        inp.mkdir()
        expect = 'empty corpus'
    elif case == 'no_usable':
        (inp / 'repo').mkdir(parents=True)
        (inp / 'repo' / 'x.py').write_bytes(b'\0\0\0')
        expect = 'no usable source file in any repository'
    elif case == 'missing_field':
        inp = tmp_path / 'in.jsonl'
        inp.write_text(json.dumps({'repo_name': 'a', 'body': 'x'}) + '\n')
        expect = 'in.jsonl:1: expected a repository field'
    elif case == 'missing_input':
        expect = 'not found'
    elif case == 'bad_languages':
        expect = "--languages='python,cobol': expected a comma-separated list of python, java"
    else:
        expect = "--task='nope': expected one of"
    args = [f'--input={inp}', f'--out_dir={tmp_path / "out"}', '--task=nope' if case == 'bad_task' else '--task=icc']
    args += ['--languages=python,cobol'] if case == 'bad_languages' else []
    rc, so, se = run_prepare(*args)
    assert rc == 1 and expect in se and 'Traceback' not in se
    assert not list((tmp_path / 'out').rglob('*.tmp')) if (tmp_path / 'out').exists() else True


def test_synthconl_task(tmp_path):
    rows = []
    for i, (a, b) in enumerate([(FUNC, OTHER), (FUNC.replace('result', 'res'), THIRD), (OTHER, THIRD),
                                (THIRD, FUNC + '#'), (THIRD.replace('items', 'xs'), OTHER.replace('key', 'k'))]):
        rows.append({'repository_name': f'o/r{i}', 'func_path_in_repository': 'a.py', 'language2': 'Go',
                     'func2': b, 'language1_CSN': 'Python', 'func1_CSN': a,
                     'func_documentation_string': f'Doc {i}.', 'func_code_url': f'u{i}'})
    p = tmp_path / 'synth.jsonl'
    p.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    rc, so, se = run_prepare('--task=synthconl', f'--input={p}', f'--out_dir={tmp_path / "out"}', '--num_proc=1')
    assert rc == 0, se
    assert 'removed 2 of 5 rows' in so  # row 1 ~ row 0 and row 4 ~ row 3 in func1_CSN; rows 2, 3 share
    # THIRD but in different columns, which is not a duplicate
    pairs = data.read_pairs(str(tmp_path / 'out' / 'synthconl' / 'train.jsonl'))
    assert [p['id'] for p in pairs] == ['u0#text', 'u0#code', 'u2#text', 'u2#code', 'u3#text', 'u3#code']
    assert pairs[1]['query_lang'] == 'python' and pairs[1]['code_lang'] == 'go'
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(json.dumps({k: v for k, v in rows[0].items() if k != 'language2'}) + '\n')
    rc, so, se = run_prepare('--task=synthconl', f'--input={bad}', f'--out_dir={tmp_path / "out"}')
    assert rc == 1 and f"error: {bad}:1: missing column 'language2'" in se


def test_codesearchnet_task(tmp_path):
    code = 'def f(x):\n    """Add one to x and return it."""\n    y = x + 1\n    return y\n'
    row = {'repo': 'o/r', 'path': 'a.py', 'func_name': 'f', 'original_string': code, 'language': 'python',
           'code': code, 'code_tokens': [], 'docstring': 'Add one to x and return it.',
           'docstring_tokens': ['Add', 'one', 'to', 'x', 'and', 'return', 'it', '.'], 'url': 'u', 'partition': 'train'}
    p = tmp_path / 'python_train_0.jsonl'
    p.write_text(json.dumps(row) + '\n')
    rc, so, se = run_prepare('--task=retrieval', f'--input={p}', f'--out_dir={tmp_path / "out"}')
    assert rc == 0, se
    (pair,) = data.read_pairs(str(tmp_path / 'out' / 'retrieval' / 'codesearchnet.jsonl'))
    assert pair['query'] == 'Add one to x and return it .' and pair['code'] == 'def f(x):\n    y = x + 1\n    return y\n'


def test_icc_with_a_starcoder2_style_tokenizer(tmp_path):
    """--tokenizer=<dir of vocab.json + merges.txt>: ids fit its n_vocab, and loading the data with
    another tokenizer stops with a clear error."""
    from test_tokenizer import train_hf_bpe
    train_hf_bpe(tmp_path / 'tok')
    for p in ('json', 'html'):
        shutil.copytree(os.path.join(STDLIB, p), tmp_path / 'corpus' / p, ignore=shutil.ignore_patterns('__pycache__'))
    rc, so, se = run_prepare(f'--input={tmp_path / "corpus"}', f'--out_dir={tmp_path / "out"}', '--task=icc',
                             f'--tokenizer={tmp_path / "tok"}', '--max_len=256', '--val_fraction=0.5')
    assert rc == 0, se
    tok = get_tokenizer(str(tmp_path / 'tok'))
    ds = data.load_icc(str(tmp_path / 'out'), 'train', tok_meta=tok, vocab_size=tok.n_vocab)
    seq, _ = ds.get(0)
    assert seq[0] == tok.sep_id == 1200 and seq[-1] == tok.cls_id and seq.max() < tok.n_vocab
    with pytest.raises(ValueError, match="built with another tokenizer: name is 'starcoder2' there"):
        data.load_icc(str(tmp_path / 'out'), 'train', tok_meta=get_tokenizer())


# ----------------------------------------------------------------------------- several languages

GO = '''package p{i}

// {name} adds up the values of a slice and returns the total.
func {name}(xs []int) int {{
\t{a} := {i}
\tfor _, {b} := range xs {{
\t\t{a} += {b} * {c}
\t}}
\treturn {a}
}}
'''
JAVA = '''package p{i};

public class {name}Counter {{
    /**
     * Counts the words of a line of text, split at {{@code spaces}}.
     * @param line the text
     */
    public int {name}(String line) {{
        int {a} = {i};
        for (String {b} : line.split("{c}")) {a}++;
        return {a};
    }}
}}
'''


def distinct_names(rng, n):
    """n random identifiers of 8 letters: functions that are not near-duplicates of each other."""
    return [''.join(chr(97 + int(x)) for x in rng.integers(0, 26, 8)) for _ in range(n)]


def test_several_languages_split_per_language(tmp_path):
    """A directory of Python, Go and Java repositories: every language gets train, valid and test
    repositories, its pairs carry its language, and the CodeSearchNet layout has a directory per
    language that the benchmark loader reads."""
    corpus, rng = tmp_path / 'corpus', np.random.default_rng(0)
    for p in ('json', 'html', 'wsgiref', 'xmlrpc', 'urllib'):
        shutil.copytree(os.path.join(STDLIB, p), corpus / p, ignore=shutil.ignore_patterns('__pycache__'))
    for r in range(5):
        for lang, ext, text in (('go', 'go', GO), ('java', 'java', JAVA)):
            os.makedirs(corpus / f'{lang}{r}')
            for i in range(3 + r):
                name, a, b, c = distinct_names(rng, 4)
                (corpus / f'{lang}{r}' / f'f{i}.{ext}').write_text(text.format(i=10 * r + i, name=name, a=a, b=b, c=c))
    out = tmp_path / 'out'
    rc, so, se = run_prepare(f'--input={corpus}', f'--out_dir={out}', '--task=retrieval', '--heldout_fraction=0.2',
                             '--num_proc=2')
    assert rc == 0, se
    splits = json.load(open(out / 'splits.json'))['splits']
    for lang in ('go', 'java'):
        assert {splits[f'{lang}{r}'] for r in range(5)} == {'train', 'valid', 'test'}
        assert f'split {lang}: ' in so
    assert {splits[p] for p in ('json', 'html', 'wsgiref', 'xmlrpc', 'urllib')} == {'train', 'valid', 'test'}
    for s in ('train', 'valid', 'test'):
        rows = data.read_pairs(str(out / 'retrieval' / f'{s}.jsonl'))
        for r in rows:
            assert splits[r['repo']] == s
            assert r['code_lang'] == {'go': 'go', 'ja': 'java'}.get(r['repo'][:2], 'python')
        for lang in ('go', 'java'):
            csn = data.load_codesearchnet(str(out / 'codesearchnet' / lang / 'final' / 'jsonl' / s))
            assert csn and all(c['language'] == lang and splits[c['repo']] == s for c in csn)
            assert sum(r['code_lang'] == lang and r['kind'] == 'text-code' for r in rows) == len(csn)
    java = data.load_codesearchnet(str(out / 'codesearchnet' / 'java' / 'final' / 'jsonl' / 'train'))
    assert java[0]['query'].startswith('Counts the words of a line of text') and '/**' not in java[0]['code']
    assert not (out / 'codesearchnet' / 'ruby').exists()
