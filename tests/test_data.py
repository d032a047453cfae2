"""
Data format and loader tests (CPU, hermetic):  python -m pytest tests/test_data.py -q
"""
import gzip
import json
import os

import numpy as np
import pytest

import data
from tokenizer import get_tokenizer

CT_DIR = '/work/shared/data/codexglue-ct'


# ----------------------------------------------------------------------------- shards

@pytest.mark.parametrize('seqs,labels', [
    ([], []),
    ([[1, 2, 3]], [1]),
    ([[100277, 5, 100278], [100277, 7, 8, 100277, 9, 100278], [0]], [1, 0, 1]),
    ([[2 ** 32 - 1, 0, 100280]] * 50, [0, 1] * 25),
])
def test_shard_roundtrip(tmp_path, seqs, labels):
    p = str(tmp_path / 'train_0000.bin')
    data.write_shard(p, seqs, labels)
    assert not os.path.exists(p + '.tmp')
    s = data.Shard(p)
    assert len(s) == len(seqs) and s.n_tokens == sum(map(len, seqs))
    assert os.path.getsize(p) == 64 + 4 * s.n_tokens + 8 * (len(seqs) + 1) + len(seqs)
    assert list(s.lengths) == [len(x) for x in seqs]
    for i, (x, y) in enumerate(zip(seqs, labels)):
        tok, lab = s.get(i)
        assert tok.dtype == np.uint32 and tok.tolist() == x and lab == y
    header = np.fromfile(p, dtype='<i8', count=8)
    assert header.tolist() == [0x4D6F5345, 1, 4, s.n_tokens, len(seqs), 0, 0, 0]


def test_shard_errors(tmp_path):
    p = str(tmp_path / 'train_0003.bin')
    data.write_shard(p, [list(range(1000)), list(range(234))], [1, 0])
    raw = open(p, 'rb').read()
    open(p, 'wb').write(raw[:-500])
    with pytest.raises(ValueError, match=r"train_0003.bin: truncated: header says 1234 tokens .* file holds"):
        data.Shard(p)
    open(p, 'wb').write(b'GPT2' + raw[4:])
    with pytest.raises(ValueError, match=r"train_0003.bin: not an ICC shard \(magic"):
        data.Shard(p)
    bad = np.frombuffer(raw[:64], dtype='<i8').copy()
    bad[1] = 2
    open(p, 'wb').write(bad.tobytes() + raw[64:])
    with pytest.raises(ValueError, match="shard version 2"):
        data.Shard(p)
    open(p, 'wb').write(raw[:10])
    with pytest.raises(ValueError, match="shorter than the 64-byte header"):
        data.Shard(p)
    with pytest.raises(ValueError, match="labels"):
        data.write_shard(p, [[1]], [2])
    with pytest.raises(FileNotFoundError):
        data.Shard(str(tmp_path / 'nope.bin'))


def make_icc_dir(d, tok, shards):
    """A manifest + shards as prepare.py writes them; shards = {split: [(seqs, labels), ...]}."""
    os.makedirs(d, exist_ok=True)
    splits, max_id = {}, 0
    for split, parts in shards.items():
        names = []
        for k, (seqs, labels) in enumerate(parts):
            name = f'{split}_{k:04d}.bin'
            data.write_shard(os.path.join(d, name), seqs, labels)
            names.append(name)
            max_id = max([max_id] + [max(s) for s in seqs])
        splits[split] = {'shards': names, 'sequences': sum(len(s) for s, _ in parts),
                         'tokens': sum(len(x) for s, _ in parts for x in s), 'repositories': 1, 'positives': 0}
    data.write_json(os.path.join(d, 'manifest.json'), {
        'format': 'mose-icc', 'version': 1, 'tokenizer': tok.meta(), 'max_len': 16, 'seed': 0,
        'splits': splits, 'max_token_id': max_id})


def test_load_icc(tmp_path):
    tok = get_tokenizer()
    d = str(tmp_path / 'icc')
    a = [[100277, 1, 2, 100278], [100277, 3, 100278]]
    b = [[100277, 4, 100277, 5, 6, 100278]]
    make_icc_dir(d, tok, {'train': [(a, [1, 1]), (b, [0])], 'val': [(a[:1], [1])]})
    ds = data.load_icc(str(tmp_path), 'train', tok_meta=tok, vocab_size=tok.n_vocab)  # parent dir works too
    assert len(ds) == 3 and ds.lengths.tolist() == [4, 3, 6] and ds.labels.tolist() == [1, 1, 0]
    assert [ds.get(i)[0].tolist() for i in range(3)] == a + b and ds.get(2)[1] == 0
    with pytest.raises(IndexError):
        ds.get(3)
    assert len(data.load_icc(d, 'val')) == 1
    with pytest.raises(ValueError, match="no split 'test'"):
        data.load_icc(d, 'test')
    with pytest.raises(ValueError, match="does not fit vocab_size 49156"):
        data.load_icc(d, 'train', vocab_size=49156)
    with pytest.raises(ValueError, match=r"manifest.json: built with another tokenizer: n_vocab"):
        data.load_icc(d, 'train', tok_meta=dict(tok.meta(), n_vocab=49156))
    os.remove(os.path.join(d, 'train_0001.bin'))
    with pytest.raises(FileNotFoundError, match="train_0001.bin: shard not found"):
        data.load_icc(d, 'train')
    os.remove(os.path.join(d, 'manifest.json'))
    with pytest.raises(FileNotFoundError, match="run `python prepare.py"):
        data.load_icc(d, 'train')


# ----------------------------------------------------------------------------- jsonl

@pytest.mark.parametrize('gz', [False, True])
def test_read_jsonl(tmp_path, gz):
    p = str(tmp_path / ('x.jsonl.gz' if gz else 'x.jsonl'))
    body = b'{"a": 1}\n\n{"a": 2, "s": "caf\xe9"}\n{"a": 3,,}\n[1, 2]\n{"a": 4}\n'
    (gzip.open if gz else open)(p, 'wb').write(body)
    with pytest.raises(ValueError, match=r"x.jsonl(.gz)?:4: malformed JSON"):
        data.read_jsonl(p)
    stats = {}
    rows = data.read_jsonl(p, skip_bad=True, stats=stats)
    assert [r['a'] for r in rows] == [1, 2, 4]
    assert rows[1]['s'] == 'caf\ufffd'
    assert stats == {'bad_lines': 2, 'replaced_lines': 1}


def test_read_jsonl_empty_and_missing(tmp_path):
    p = tmp_path / 'e.jsonl'
    p.write_text('\n\n')
    with pytest.raises(ValueError, match="e.jsonl: empty"):
        data.read_jsonl(str(p))
    with pytest.raises(FileNotFoundError, match="nope.jsonl: not found"):
        data.read_jsonl(str(tmp_path / 'nope.jsonl'))


# ----------------------------------------------------------------------------- CodeSearchNet

DOC_CASES = [
    ('def f(x):\n    """Return x."""\n    return x\n', 'def f(x):\n    return x\n'),
    ("def f(x):\n    '''Multi\n\n    line.\n    '''\n    y = x\n    return y\n", 'def f(x):\n    y = x\n    return y\n'),
    ('def f(a,\n      b=(1, 2)) -> int:\n    # comment\n    r"""Raw \\d."""\n    return a\n',
     'def f(a,\n      b=(1, 2)) -> int:\n    # comment\n    return a\n'),
    ('def f(): "doc"; return 1\n', 'def f(): return 1\n'),
    ('def f(x):\n    return "not a docstring"\n', 'def f(x):\n    return "not a docstring"\n'),
    ('def f(x):\n    """Py2 code."""\n    print "hi %s" % x\n    exec "1"\n', 'def f(x):\n    print "hi %s" % x\n    exec "1"\n'),
    ('@dec\nasync def f(x):\n    u"""Unicode."""\n    await x\n', '@dec\nasync def f(x):\n    await x\n'),
]


@pytest.mark.parametrize('code,expected', DOC_CASES)
def test_strip_docstring(code, expected):
    assert data.strip_docstring(code) == expected
    assert data.strip_docstring(code, 'java') == code


def csn_row(i, lang='python'):
    code = f'def f{i}(x):\n    """Add {i} to x."""\n    return x + {i}\n'
    return {'repo': 'o/r', 'path': 'a.py', 'func_name': f'f{i}', 'original_string': code, 'language': lang,
            'code': code, 'code_tokens': ['def', f'f{i}'], 'docstring': f'Add {i} to x.',
            'docstring_tokens': ['Add', str(i), 'to', 'x', '.'], 'sha': '0', 'partition': 'test',
            'url': f'https://github.com/o/r/blob/0/a.py#L{i}'}


def test_load_codesearchnet(tmp_path):
    d = tmp_path / 'python' / 'final' / 'jsonl' / 'test'
    d.mkdir(parents=True)
    with gzip.open(d / 'python_test_0.jsonl.gz', 'wt') as f:
        for i in range(3):
            f.write(json.dumps(csn_row(i)) + '\n')
    with open(d / 'other.jsonl', 'w') as f:
        f.write(json.dumps(csn_row(9, 'go')) + '\n')
    rows = data.load_codesearchnet(str(tmp_path / 'python'), language='python')
    assert [r['id'] for r in rows] == [f'https://github.com/o/r/blob/0/a.py#L{i}' for i in range(3)]
    assert rows[1]['query'] == 'Add 1 to x .'
    assert rows[1]['code'] == 'def f1(x):\n    return x + 1\n' and 'Add 1' not in rows[1]['code']
    assert len(data.load_codesearchnet(str(d))) == 4
    with pytest.raises(ValueError, match="no CodeSearchNet rows for language 'ruby'"):
        data.load_codesearchnet(str(d), language='ruby')
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(json.dumps({'url': 'u', 'code': 'c', 'language': 'go'}) + '\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field 'docstring'"):
        data.load_codesearchnet(str(bad))


# ----------------------------------------------------------------------------- CT, POJ-104, BigCloneBench

@pytest.mark.skipif(not os.path.isdir(CT_DIR), reason='CodeXGLUE CT files not present')
@pytest.mark.parametrize('split,n', [('train', 10295), ('valid', 499)])
def test_codexglue_ct_real_files(split, n):
    rows = data.load_codexglue_ct(CT_DIR, split)
    assert len(rows) == n
    assert all(r['java'].strip() and r['cs'].strip() for r in rows)
    assert sum('public' in r['java'] for r in rows) > n // 2


def test_codexglue_ct_misaligned(tmp_path):
    (tmp_path / 'test.java-cs.txt.java').write_text('a\nb\n')
    (tmp_path / 'test.java-cs.txt.cs').write_text('a\n')
    with pytest.raises(ValueError, match="2 Java lines but 1 C# lines"):
        data.load_codexglue_ct(str(tmp_path), 'test')


def test_poj104(tmp_path):
    p = tmp_path / 'test.jsonl'
    p.write_text('{"label": "81", "index": "7", "code": "int main(){}"}\n{"label": 82, "index": 8, "code": "x"}\n')
    assert data.load_poj104(str(p))[1] == {'label': '82', 'index': '8', 'code': 'x'}
    p.write_text('{"label": "81", "code": "int main(){}"}\n')
    with pytest.raises(ValueError, match="test.jsonl:1: missing field 'index'"):
        data.load_poj104(str(p))


def test_bigclonebench_skips_missing_ids(tmp_path):
    (tmp_path / 'data.jsonl').write_text(''.join(json.dumps({'func': f'void f{i}() {{}}', 'idx': str(i)}) + '\n'
                                                 for i in range(4)))
    (tmp_path / 'train.txt').write_text('0\t1\t1\n2\t3\t0\n0\t99\t1\n77\t2\t0\n\n1\t3\t0\n')
    funcs, pairs, skipped = data.load_bigclonebench(str(tmp_path), 'train')
    assert len(funcs) == 4 and pairs == [('0', '1', 1), ('2', '3', 0), ('1', '3', 0)] and skipped == 2
    (tmp_path / 'valid.txt').write_text('0\t1\n')
    with pytest.raises(ValueError, match=r"valid.txt:1: expected 'idx1<TAB>idx2<TAB>0\|1'"):
        data.load_bigclonebench(str(tmp_path), 'valid')


# ----------------------------------------------------------------------------- SynthCoNL and pairs

def synth_rows(n=3):
    return [{'repository_name': f'o/r{i}', 'func_path_in_repository': 'a.py', 'language2': 'Go',
             'func2': f'func F{i}() {{}}', 'language1_CSN': 'python', 'func1_CSN': f'def f{i}(): pass',
             'func_documentation_string': f'Do thing {i}.', 'func_code_url': f'u{i}'} for i in range(n)]


@pytest.mark.parametrize('fmt', ['jsonl', 'parquet'])
def test_load_synthconl(tmp_path, fmt):
    rows = synth_rows()
    if fmt == 'parquet':
        pa = pytest.importorskip('pyarrow')
        import pyarrow.parquet as pq
        p = tmp_path / 'train-00000.parquet'
        pq.write_table(pa.Table.from_pylist(rows), p)
        pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != 'func2'} for r in rows]),
                       tmp_path / 'bad.parquet')
    else:
        p = tmp_path / 'train.jsonl'
        p.write_text(''.join(json.dumps(r) + '\n' for r in rows))
        (tmp_path / 'bad.jsonl').write_text(json.dumps({k: v for k, v in rows[0].items() if k != 'func2'}) + '\n')
    assert data.load_synthconl(str(p)) == rows
    with pytest.raises(ValueError, match=r"bad\.(parquet|jsonl)(:1)?: missing column 'func2'"):
        data.load_synthconl(str(tmp_path / f'bad.{fmt}'))
    pairs = data.synthconl_to_pairs(rows)
    assert [p['kind'] for p in pairs] == ['text-code', 'code-code'] * 3
    assert pairs[1] == {'kind': 'code-code', 'query': 'def f0(): pass', 'query_lang': 'python',
                        'code': 'func F0() {}', 'code_lang': 'go', 'repo': 'o/r0', 'id': 'u0#code'}


def test_pairs_roundtrip_and_validation(tmp_path):
    rows = data.synthconl_to_pairs(synth_rows(5))
    p = str(tmp_path / 'train.jsonl')
    data.write_pairs(p, rows)
    assert data.read_pairs(p) == rows
    with pytest.raises(ValueError, match="query_lang must be null exactly for text-code"):
        data.write_pairs(p, [dict(rows[0], query_lang='python')])
    assert data.read_pairs(p) == rows  # the failed write left the old file intact
    assert not os.path.exists(p + '.tmp')
    with open(p, 'a') as f:
        f.write(json.dumps({k: v for k, v in rows[0].items() if k != 'repo'}) + '\n')
    with pytest.raises(ValueError, match=r"train.jsonl:11: missing field 'repo'"):
        data.read_pairs(p)
