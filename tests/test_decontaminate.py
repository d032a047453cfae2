"""
Decontamination tests (CPU, hermetic, tiny corpora in tmp_path):  python -m pytest tests/test_decontaminate.py -q

Functions of evaluation files are planted into a training repository, verbatim, re-flowed and as a
near-duplicate: prepare.py must leave them out of every training output and count each once.
"""
import gzip
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import data
import dedup
from decontaminate import VerbatimIndex, read_eval_file, window_hashes
from dedup import squeeze
from tokenizer import get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDLIB = sysconfig.get_paths()['stdlib']


def run_prepare(*args):
    r = subprocess.run([sys.executable, 'prepare.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


# ----------------------------------------------------------------------------- verbatim search

def test_window_hashes_are_the_hash_of_each_window():
    rng = np.random.default_rng(0)
    text = ''.join(chr(int(c)) for c in rng.integers(32, 0x3000, 700))
    w = window_hashes(text, 100)
    assert len(w) == 601
    for i in (0, 1, 250, 600):
        assert w[i] == window_hashes(text[i:i + 100], 100)[0]
    assert len(set(w.tolist())) == 601 and len(window_hashes(text[:99], 100)) == 0


def test_verbatim_index_finds_reflowed_functions():
    src = open(os.path.join(STDLIB, 'heapq.py'), encoding='utf-8').read()
    evals = sorted({squeeze(src[i:i + 400]) for i in (1000, 5000, 9000)} | {'x' * 150})
    index = VerbatimIndex(evals)
    # the file re-flowed (one line, other indentation) still contains them; chunk boundaries do not hide one
    text = squeeze(src.replace('\n    ', '\n\t'))
    for chunk in (1 << 20, 257):
        found = index.find(text, chunk=chunk)
        assert {e for e, _ in found} == {i for i, e in enumerate(evals) if e != 'x' * 150}
        assert all(text[p:p + len(evals[e])] == evals[e] for e, p in found)
    for e in evals:  # one character changed in the middle of each: none is there verbatim
        text = text.replace(e, e[:200] + '#' + e[200:])
    assert not index.find(text)


def test_read_eval_file_fields(tmp_path):
    rows = {'poj.jsonl': [{'label': '3', 'index': '1', 'code': 'int main() {}'}],
            'bcb.jsonl': [{'func': 'void f() {}', 'idx': '7'}],
            'pairs.jsonl.gz': [{'code1': 'a()', 'code2': 'b()', 'label': 1},
                               {'code1': 'c()', 'code2': 'd()', 'label': 0}],
            'csn.jsonl': [{'original_string': 'def f(): pass', 'code': 'def f(): pass', 'url': 'u'}]}
    for name, rs in rows.items():
        with (gzip.open if name.endswith('.gz') else open)(tmp_path / name, 'wt') as f:
            f.writelines(json.dumps(r) + '\n' for r in rs)
    assert read_eval_file(str(tmp_path / 'poj.jsonl')) == ['int main() {}']
    assert read_eval_file(str(tmp_path / 'bcb.jsonl')) == ['void f() {}']
    assert read_eval_file(str(tmp_path / 'pairs.jsonl.gz')) == ['a()', 'b()', 'c()', 'd()']
    assert read_eval_file(str(tmp_path / 'csn.jsonl')) == ['def f(): pass', 'def f(): pass']
    (tmp_path / 'test.java-cs.txt.java').write_text('public int a() { return 1; }\nvoid b() {}\n')
    assert read_eval_file(str(tmp_path / 'test.java-cs.txt.java')) == ['public int a() { return 1; }', 'void b() {}']
    (tmp_path / 'bad.jsonl').write_text(json.dumps({'code': 'x'}) + '\n' + json.dumps({'text': 'y'}) + '\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing code field 'code'"):
        read_eval_file(str(tmp_path / 'bad.jsonl'))


# ----------------------------------------------------------------------------- the stage, end to end

VERBATIM = '''def rolling_checksum(data, window):
    """Adler-style rolling checksum of every window of a byte string."""
    a, b, out = 1, 0, []
    for i, byte in enumerate(data):
        a = (a + byte) % 65521
        b = (b + a) % 65521
        if i >= window:
            a = (a - data[i - window]) % 65521
            b = (b - window * data[i - window] - 1) % 65521
        out.append((b << 16) | a)
    return out
'''
NEAR = '''def parse_key_values(text, sep='=', comment='#'):
    """Parse lines of key=value pairs into a dict, skipping comments and blank lines."""
    result = {}
    for line in text.splitlines():
        line = line.split(comment, 1)[0].strip()
        if not line:
            continue
        key, found, value = line.partition(sep)
        if not found:
            raise ValueError('no separator in line: %r' % line)
        result[key.strip()] = value.strip()
    return result
'''
NEAR_COPY = NEAR.replace("'no separator in line: %r'", "'missing %r in line %r' % (sep, line)").replace(
    "    return result\n", "    log.debug('parsed %d keys', len(result))\n    return result\n")
REFLOWED = '''def chunked(iterable, size):
    """Yield lists of at most size items from an iterable, in order."""
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
'''
CONTROL = '''def clamp_to_range(value, low, high):
    """Clamp a number to the closed range from low to high, whichever side it is on."""
    if low > high:
        raise ValueError('empty range')
    return max(low, min(high, value))
'''
PLANTED = (VERBATIM, NEAR_COPY, REFLOWED)


@pytest.fixture(scope='module')
def planted(tmp_path_factory):
    """A corpus whose one large repository (so, a training one) holds the planted functions, and
    three evaluation files that hold the originals: a POJ-104-style jsonl (code), a
    CodeSearchNet-style jsonl.gz (original_string, code) and a text file of one function a line."""
    d = tmp_path_factory.mktemp('decon')
    corpus, ev = d / 'corpus', d / 'eval'
    for p in ('logging', 'http', 'email', 'xmlrpc', 'urllib'):
        shutil.copytree(os.path.join(STDLIB, p), corpus / 'big' / p, ignore=shutil.ignore_patterns('__pycache__'))
    for p in ('json', 'html', 'wsgiref', 'sqlite3'):
        shutil.copytree(os.path.join(STDLIB, p), corpus / p, ignore=shutil.ignore_patterns('__pycache__'))
    method = ''.join('    ' + line if line.strip() else line for line in VERBATIM.splitlines(keepends=True))
    (corpus / 'big' / 'planted.py').write_text(f"import logging\nlog = logging.getLogger(__name__)\n\n\n"
                                               f"class Checksums:\n{method}\n\n{NEAR_COPY}\n\n{CONTROL}")
    (corpus / 'big' / 'iterutil.py').write_text(REFLOWED)
    os.makedirs(ev / 'ct')
    (ev / 'poj.jsonl').write_text(json.dumps({'label': '1', 'index': '0', 'code': VERBATIM}) + '\n')
    with gzip.open(ev / 'csn.jsonl.gz', 'wt') as f:
        f.write(json.dumps({'original_string': NEAR, 'code': NEAR, 'url': 'u', 'language': 'python'}) + '\n')
    (ev / 'ct' / 'test.java-cs.txt.java').write_text('public int one() { return 1; }\n' + ' '.join(REFLOWED.split())
                                                     + '\n' + 'x = 1\n')
    sources = [str(ev / 'poj.jsonl'), str(ev / 'csn.jsonl.gz'), str(ev / 'ct')]
    out = d / 'out'
    args = [f'--input={corpus}', f'--out_dir={out}', '--max_len=2048', '--heldout_fraction=0.15', '--num_proc=2',
            '--bpe_vocab=512']
    rc, so, se = run_prepare(*args, '--decontaminate=' + ','.join(sources))
    assert rc == 0, se
    return out, so, sources, args


def training_texts(out):
    """Squeezed text of every training output: fine-tuning pairs, clone functions of training pairs,
    every ICC sequence (both ICC splits: a pre-trained file may be in either)."""
    rows = data.read_pairs(str(out / 'retrieval' / 'train.jsonl'))
    funcs, pairs, _ = data.load_bigclonebench(str(out / 'bigclonebench'), 'train')
    tok = get_tokenizer(str(out / 'tokenizer'))  # the BPE trained on the training repositories
    icc = [tok.decode(data.load_icc(str(out), s, tok_meta=tok).get(i)[0])
           for s in ('train', 'val') for i in range(len(data.load_icc(str(out), s, tok_meta=tok)))]
    return {'pairs': [squeeze(r['query'] + r['code']) for r in rows],
            'clone': [squeeze(funcs[a] + funcs[b]) for a, b, _ in pairs], 'icc': squeeze(''.join(icc))}


def test_planted_evaluation_functions_leave_the_training_outputs(planted):
    out, so, sources, _ = planted
    splits = json.load(open(out / 'splits.json'))['splits']
    assert splits['big'] == 'train'  # the largest repository lands in the largest split
    got = training_texts(out)
    for code in PLANTED:
        body = squeeze(code.split('"""')[-1])  # the function without its documentation, as pairs hold it
        assert not any(body in t for t in got['pairs']) and not any(body in t for t in got['clone'])
        assert body not in got['icc']
    control = squeeze(CONTROL.split('"""')[-1])
    assert any(control in t for t in got['pairs'])  # its file-mates stay in the fine-tuning pairs ...
    assert control not in got['icc'] and squeeze('class RotatingFileHandler') in got['icc']  # ... not in ICC
    by = {s['source']: s for s in json.load(open(out / 'retrieval' / 'manifest.json'))['decontamination']['sources']}
    poj, csn, ct = (by[s] for s in sources)
    assert (poj['training_functions'], poj['verbatim'], poj['near_duplicate'], poj['icc_files']) == (1, 1, 0, 1)
    assert (csn['training_functions'], csn['verbatim'], csn['near_duplicate'], csn['icc_files']) == (1, 0, 1, 1)
    assert (ct['training_functions'], ct['verbatim'], ct['icc_files'], ct['functions'], ct['rows']) == (1, 1, 1, 1, 3)
    assert (csn['rows'], csn['functions']) == (2, 1)  # original_string and code: one function
    assert f"decontaminate: {sources[0]}: 1 functions of >= 100 characters (1 read): dropped 1 training functions " \
           f"(1 verbatim, 0 near-duplicates) and 1 pre-training files" in so
    assert 'decontaminate: test split: ' in so
    for d in ('icc', 'bigclonebench'):
        rec = json.load(open(out / d / 'manifest.json'))['decontamination']
        assert [s['source'] for s in rec['sources']] == ['test split'] + sources
        assert rec['sources'][1]['icc_files'] == 1 and rec['threshold'] == 0.7 and rec['num_perm'] == 256


def test_without_decontamination_the_planted_functions_are_trained_on(planted, tmp_path):
    """The control: the same corpus without evaluation files keeps them (and a changed list of
    evaluation files rebuilds every stage instead of reusing it)."""
    out, _, _, args = planted
    shutil.copytree(out, tmp_path / 'out')
    args = [a if not a.startswith('--out_dir=') else f'--out_dir={tmp_path / "out"}' for a in args]
    rc, so, se = run_prepare(*args, '--decontaminate=')
    assert rc == 0, se
    assert 'reusing it' not in so, so
    got = training_texts(tmp_path / 'out')
    for code in PLANTED:
        body = squeeze(code.split('"""')[-1])
        assert any(body in t for t in got['pairs']) and body in got['icc']
    # the tokenizer too: trained without planted.py and iterutil.py, then with them
    bpe = [json.load(open(o / 'tokenizer' / 'manifest.json'))['stats'] for o in (out, tmp_path / 'out')]
    assert bpe[1]['files'] == bpe[0]['files'] + 2 and bpe[0]['left_out'] == bpe[1]['left_out'] + 2


@pytest.mark.parametrize('case', ['no_code_field', 'missing'])
def test_bad_evaluation_files(tmp_path, case):
    (tmp_path / 'corpus' / 'r').mkdir(parents=True)
    (tmp_path / 'corpus' / 'r' / 'a.py').write_text(CONTROL)
    bad = tmp_path / 'eval.jsonl'
    if case == 'no_code_field':
        bad.write_text(json.dumps({'label': 1, 'text': 'x'}) + '\n')
        expect = (f"error: {bad}:1: no code field (expected one of original_string, code, func, code1, code2; "
                  f"the row has label, text)")
    else:
        expect = f"error: --decontaminate: {bad}: not found (expected a file or directory of evaluation functions)"
    rc, so, se = run_prepare(f'--input={tmp_path / "corpus"}', f'--out_dir={tmp_path / "out"}',
                             f'--decontaminate={bad}')
    assert rc == 1 and se.strip().splitlines() == [expect]
    assert 'functions:' not in so and not (tmp_path / 'out').exists()  # stopped before any work


def test_near_copy_is_a_near_duplicate():
    """The planted NEAR_COPY is what the test says: a MinHash near-duplicate, not a verbatim copy."""
    a, b = squeeze(NEAR), squeeze(NEAR_COPY)
    assert a not in b and (dedup.minhash_signature(a) == dedup.minhash_signature(b)).mean() >= 0.7


def test_default_evaluation_dir_is_found_beside_the_repository(tmp_path, monkeypatch, capsys):
    """The default ../shared/data is read beside the repository, whatever the working directory; a
    path given on the command line stays relative to the working directory."""
    import decontaminate
    repo, shared = tmp_path / 'repo', tmp_path / 'shared' / 'data'
    repo.mkdir()
    shared.mkdir(parents=True)
    (shared / 'test.java-cs.txt.java').write_text('public int f() { return 1; }\n')
    elsewhere = tmp_path / 'a' / 'b'
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(decontaminate, '__file__', str(repo / 'decontaminate.py'))
    [src] = decontaminate.eval_sources(decontaminate.DEFAULT_EVAL_DIR)
    assert src['path'] == '../shared/data' and src['files'] == [str(shared / 'test.java-cs.txt.java')]
    with pytest.raises(FileNotFoundError, match=r'--decontaminate: \./shared/data: not found'):
        decontaminate.eval_sources('./shared/data')  # relative to the working directory: not there
    shutil.rmtree(tmp_path / 'shared')
    assert decontaminate.eval_sources(decontaminate.DEFAULT_EVAL_DIR) == []
    assert f"../shared/data not found beside the repository ({shared})" in capsys.readouterr().out
