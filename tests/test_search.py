"""
encode.py and search.py tests (CPU, tiny artefacts in tmp_path):  python -m pytest tests/test_search.py -q

The model is planted: its blocks add nothing (zero output projections), so an embedding is the mean
of the token embeddings of the text after the instruction (pooling='text'), a bag of tokens in which
the function whose documentation is the query must rank first. search.py runs as a subprocess, as a
user runs it.
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from encode import encode_texts, fingerprint, load_encoder
from helpers import stdlib_sources
from model import MoSE, MoSEConfig, config_to_dict
from tokenizer import CODE_INSTRUCTION, QUERY_INSTRUCTION, train_bpe
from training import left_pad, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERY = 'open a socket and retry on timeout'
TREE = {
    'net/client.py': '''import socket


def open_with_retry(host, port, retries=3):
    """Open a socket and retry on timeout."""
    for _ in range(retries):
        try:
            return socket.create_connection((host, port), timeout=5)
        except socket.timeout:
            continue
    raise ConnectionError(host)


def parse_header(line):
    """Split an HTTP header line into its name and value."""
    name, _, value = line.partition(':')
    return name.strip().lower(), value.strip()
''',
    'util/files.py': '''import shutil


def copy_tree(src, dst):
    """Copy a directory tree recursively, keeping file permissions."""
    return shutil.copytree(src, dst, copy_function=shutil.copy2)


class Cache:
    def get(self, key, default=None):
        """Return the cached value of a key, or the default."""
        return self.data.get(key, default)
''',
    'calc/sum.go': '''package calc

// Sum adds all the integers of a slice and returns the total.
func Sum(xs []int) int {
	t := 0
	for _, x := range xs {
		t += x
	}
	return t
}
''',
    'README.md': 'not source code\n',
}


def planted_model(tok, seed):
    """Exits 1 and 2 whose blocks are the identity: embedding = normalised mean of token vectors."""
    cfg = MoSEConfig(vocab_size=tok.n_vocab, n_layer=2, n_embd=128, n_head=4, n_kv_head=2, intermediate_size=64,
                     max_seq_len=256, exit_layers=(1, 2), attn_dropout=0.0, resid_dropout=0.0, embd_dropout=0.0,
                     pad_id=tok.pad_id, sep_id=tok.sep_id, pooling='text')
    torch.manual_seed(seed)
    model = MoSE(cfg)
    with torch.no_grad():
        model.embed_tokens.weight.normal_()
        for b in model.layers:
            for m in (b.self_attn.o_proj, b.mlp.c_proj):
                m.weight.zero_()
                m.bias.zero_()
    return model.eval()


def write_tree(root, files):
    for rel, text in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, 'w') as f:
            f.write(text)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp('search')
    tok = train_bpe([t for _, t in stdlib_sources(8)], 600, str(d / 'tokenizer'))
    ckpts = {}
    for name, seed in (('a', 0), ('b', 1)):
        m = planted_model(tok, seed)
        save_checkpoint(str(d / name), 1, {'model': m.state_dict(), 'model_config': config_to_dict(m.config),
                                           'tokenizer': tok.meta()}, keep_last=1)
        ckpts[name] = str(d / name)
    write_tree(d / 'tree', TREE)
    return {'dir': d, 'tok': tok, 'ckpt': ckpts, 'tree': str(d / 'tree')}


def search(*args, cwd):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'search.py'), *map(str, args)], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    return r


def results(stdout):
    """[(file:line, name, score)] of a query's result lines."""
    return [(m[1], m[2], float(m[3])) for m in re.finditer(r'^(\S+:\d+) (\S+) (-?\d+\.\d+)$', stdout, re.M)]


# ----------------------------------------------------------------------------- encode.py

def test_encode_texts_is_model_encode_of_the_released_inputs(setup):
    tok, enc = setup['tok'], load_encoder(setup['ckpt']['a'], 2)
    codes = [TREE['net/client.py'], TREE['util/files.py'][:200], 'x = 1']
    got = encode_texts(enc.model, tok, codes, 2, 'code', 'Python', batch_size=2)
    ids = [[tok.sep_id] + tok.encode(CODE_INSTRUCTION.format(language='python')) + [tok.sep_id] + tok.encode(c)
           + [tok.cls_id] for c in codes]
    with torch.no_grad():
        ref = enc.model.encode(left_pad([np.asarray(s) for s in ids], tok.pad_id), 2).numpy()
    assert got.dtype == np.float32 and got.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    q = enc.encode(QUERY, kind='query')
    ids = [tok.sep_id] + tok.encode(QUERY_INSTRUCTION) + [tok.sep_id] + tok.encode(QUERY) + [tok.cls_id]
    with torch.no_grad():
        np.testing.assert_allclose(q, enc.model.encode(torch.tensor([ids]), 2)[0].numpy(), atol=1e-6)


def test_encode_order_and_batching(setup):
    """Length-sorted batches give each text its own vector, in the order given, whatever the batch size."""
    enc = load_encoder(setup['ckpt']['a'], 1)
    texts = [TREE['net/client.py'], 'def f(): pass', TREE['calc/sum.go'], TREE['util/files.py'], 'y']
    one = np.stack([enc.encode(t, kind='code', language='python') for t in texts])
    for bs in (2, 3, 32):
        np.testing.assert_allclose(enc.encode(texts, bs, kind='code', language='python'), one, atol=1e-6)
    per_text = enc.encode(texts[:3], kind='code', language=['python', 'python', 'go'])
    np.testing.assert_allclose(per_text[:2], one[:2], atol=1e-6)
    both = encode_texts(load_encoder(setup['ckpt']['a'], 2).model, setup['tok'], texts, [1, 2], 'code', 'python')
    np.testing.assert_allclose(both[1], one, atol=1e-6)  # a list of exits: one forward, the same vectors
    assert not np.allclose(both[2], one)
    t = enc.encode_queries([QUERY, 'copy'], convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 128)
    with pytest.raises(ValueError, match='language'):
        enc.encode(texts, kind='code')
    with pytest.raises(ValueError, match="kind='doc'"):
        enc.encode(texts, kind='doc')


def test_fingerprint_tracks_the_weights_at_the_exit(setup):
    a = load_encoder(setup['ckpt']['a'], 1)
    assert a.fingerprint == fingerprint(MoSE.load(os.path.join(setup['ckpt']['a'], 'ckpt_0000001.pt')), 1)
    assert a.fingerprint != load_encoder(setup['ckpt']['a'], 2).fingerprint
    assert a.fingerprint != load_encoder(setup['ckpt']['b'], 1).fingerprint


# ----------------------------------------------------------------------------- search.py

@pytest.fixture(scope='module')
def indexed(setup):
    idx = setup['dir'] / 'index.npz'
    r = search('index', setup['tree'], '--exit', 1, f"--init_from={setup['ckpt']['a']}", f'--index={idx}',
               cwd=setup['dir'])
    assert r.returncode == 0, r.stderr
    return idx, r.stdout


def test_index_counts_and_times(indexed):
    _, out = indexed
    assert '3 files (0 unchanged, 3 new or changed, 0 removed), 5 functions' in out
    assert 'time at exit 1' in out and 'embedding 5 functions' in out and 'functions/s' in out


def test_the_documented_function_ranks_first(setup, indexed):
    idx, _ = indexed
    r = search('query', QUERY, '-k', 3, f'--index={idx}', cwd=setup['dir'])
    assert r.returncode == 0, r.stderr
    res = results(r.stdout)
    assert len(res) == 3 and res[0][:2] == ('tree/net/client.py:4', 'open_with_retry'), r.stdout
    assert res[0][2] > res[1][2] >= res[2][2]
    assert 'query at exit 1' in r.stdout and 'embedding' in r.stdout and 'over 5 functions' in r.stdout
    r = search('query', 'adds', 'all', 'the', 'integers', 'of', 'a', 'slice', f'--index={idx}', cwd=setup['dir'])
    assert results(r.stdout)[0][:2] == ('tree/calc/sum.go:4', 'Sum'), r.stdout


def test_reindex_embeds_only_changed_files(setup, indexed, tmp_path):
    tree = tmp_path / 'tree'
    write_tree(tree, TREE)
    idx = tmp_path / 'index.npz'
    shutil.copy(indexed[0], idx)
    with open(tree / 'util/files.py', 'a') as f:
        f.write('\n\ndef remove_tree(path):\n    """Delete a directory and everything below it."""\n'
                '    shutil.rmtree(path)\n')
    os.remove(tree / 'calc/sum.go')
    r = search('index', tree, '--exit', 1, f"--init_from={setup['ckpt']['a']}", f'--index={idx}', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '2 files (1 unchanged, 1 new or changed, 1 removed), 5 functions' in r.stdout, r.stdout
    assert 'embedding 3 functions' in r.stdout  # the changed file's functions only
    old, new = (np.load(p, allow_pickle=False) for p in (indexed[0], idx))
    np.testing.assert_array_equal(new['vectors'][:2], old['vectors'][1:3])  # client.py, unchanged: its rows kept
    r = search('query', 'delete a directory and everything below it', '-k', 1, f'--index={idx}', cwd=tmp_path)
    assert results(r.stdout)[0][:2] == ('tree/util/files.py:15', 'remove_tree'), r.stdout


def one_line_error(r, *needles):
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_query_at_another_exit_is_an_error(setup, indexed):
    r = search('query', QUERY, '--exit', 2, f'--index={indexed[0]}', cwd=setup['dir'])
    one_line_error(r, 'built at exit 1', 'asks exit 2')


def test_query_with_another_model_is_an_error(setup, indexed):
    r = search('query', QUERY, f"--init_from={setup['ckpt']['b']}", f'--index={indexed[0]}', cwd=setup['dir'])
    one_line_error(r, 'built by another model')


def test_an_export_of_the_model_queries_its_index(setup, indexed):
    out = setup['dir'] / 'export1'
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'export.py'), f"--init_from={setup['ckpt']['a']}",
                        '--exit=1', f'--out_dir={out}', '--check=false'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    r = search('query', QUERY, f'--init_from={out}', '-k', 1, f'--index={indexed[0]}', cwd=setup['dir'])
    assert r.returncode == 0, r.stderr
    assert results(r.stdout)[0][1] == 'open_with_retry'


def test_bad_directories_and_indexes(setup, tmp_path):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'a.txt').write_text('text\n')
    model = f"--init_from={setup['ckpt']['a']}"
    one_line_error(search('index', tmp_path / 'empty', model, cwd=tmp_path), 'no source files')
    one_line_error(search('index', tmp_path / 'docs', model, cwd=tmp_path), 'no source files')
    one_line_error(search('index', tmp_path / 'absent', model, cwd=tmp_path), 'not a directory')
    (tmp_path / 'bad.npz').write_bytes(b'not an index')
    one_line_error(search('query', QUERY, '--index=bad.npz', cwd=tmp_path), 'not a readable search index')
    one_line_error(search('query', QUERY, '--index=none.npz', cwd=tmp_path), 'no index at none.npz')
    one_line_error(search('find', QUERY, cwd=tmp_path), 'expected the command index or query')
    assert not (tmp_path / 'search_index.npz').exists()
