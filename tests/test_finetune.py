"""Tests of finetune.py. Run: python -m pytest tests/test_finetune.py -q"""
import ast
import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import benchmarks
from data import read_pairs
from encode import batched_forward, encoder
from finetune import augment_code, augment_rng, clip_loss, retrieval_texts, validate
from helpers import stdlib_sources
from metrics import mrr, target_ranks
from model import MoSE, MoSEConfig, config_to_dict
from tokenizer import CODE_INSTRUCTION, QUERY_INSTRUCTION, get_tokenizer
from training import list_checkpoints, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -----------------------------------------------------------------------------
# fixtures: a tiny "pre-trained" checkpoint and real pairs from the standard library

@pytest.fixture(scope='module')
def tok():
    return get_tokenizer('cl100k_base')


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, tok):
    out = tmp_path_factory.mktemp('pre')
    torch.manual_seed(0)
    m = MoSE(MoSEConfig(vocab_size=tok.n_vocab, pad_id=tok.pad_id, n_layer=4, n_embd=32, n_head=4, n_kv_head=1,
                        intermediate_size=96, exit_layers=(2, 4), max_seq_len=128))
    save_checkpoint(str(out), 10, {'model': m.state_dict(), 'model_config': config_to_dict(m.config),
                                   'tokenizer': tok.meta(), 'step': 10}, keep_last=1)
    return str(out)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Pairs files (text-code from docstrings, code-code from pairs of functions) and BigCloneBench files."""
    out = tmp_path_factory.mktemp('data')
    funcs = []
    for name, text in stdlib_sources(12):
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node):
                funcs.append((name, ast.get_docstring(node).split('\n\n')[0], ast.get_source_segment(text, node)))
    funcs = funcs[:80]
    rows = []
    for i, (repo, doc, code) in enumerate(funcs):
        rows.append({'kind': 'text-code', 'query': doc, 'query_lang': None, 'code': code, 'code_lang': 'python',
                     'repo': repo, 'id': f't{i}'})
        j = (i + 1) % len(funcs)
        rows.append({'kind': 'code-code', 'query': code, 'query_lang': 'python', 'code': funcs[j][2],
                     'code_lang': 'python', 'repo': repo, 'id': f'c{i}'})
    for split, part in (('train', rows[:120]), ('valid', rows[120:])):
        with open(out / f'{split}.jsonl', 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in part)
    bcb = out / 'bcb'
    bcb.mkdir()
    with open(bcb / 'data.jsonl', 'w') as f:
        f.writelines(json.dumps({'idx': str(i), 'func': code}) + '\n' for i, (_, _, code) in enumerate(funcs))
    for split, rng in (('train', range(0, 60)), ('valid', range(60, 79))):
        with open(bcb / f'{split}.txt', 'w') as f:
            f.writelines(f"{i}\t{i if i % 2 else i + 1}\t{int(i % 2 == 1)}\n" for i in rng)
    return out


BASE = dict(batch_size=8, total_batch=8, max_len=96, max_steps=3, log_interval=1, eval_interval=100, eval_max=16,
            ckpt_interval=100, learning_rate=1e-3, dropout=0.0, dtype='float32')


def finetune(pretrained, data, out, *extra, torchrun=0, **kw):
    cmd = [sys.executable, 'finetune.py'] if not torchrun else \
        [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={torchrun}', '--standalone', 'finetune.py']
    kw = {**BASE, 'init_from': pretrained, 'out_dir': str(out), 'train_pairs': str(data / 'train.jsonl'),
          'valid_pairs': str(data / 'valid.jsonl'), 'bcb_dir': str(data / 'bcb'), **kw}
    cmd += [f"--{k}={v}" for k, v in kw.items()] + list(extra)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'})


def params(out):
    return load_checkpoint(list_checkpoints(out)[-1])['model']


def assert_same_params(a, b, atol=1e-6):
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-4), k


# -----------------------------------------------------------------------------
# the loss

def test_clip_loss_equals_direct_computation():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    loss, acc = clip_loss(q, c, 10.0)
    ref = 0.0
    for i in range(6):  # text->code row i and code->text column i, written out with exp / log
        row = [10.0 * float(q[i] @ c[j]) for j in range(6)]
        col = [10.0 * float(q[j] @ c[i]) for j in range(6)]
        ref += -np.log(np.exp(row[i]) / np.sum(np.exp(row))) - np.log(np.exp(col[i]) / np.sum(np.exp(col)))
    assert loss.item() == pytest.approx(ref / 12, rel=1e-5)
    assert acc.item() == pytest.approx(np.mean([int(np.argmax([float(q[i] @ c[j]) for j in range(6)]) == i) for i in range(6)]))


def test_mrr_ties_count_against_the_model():
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 3.0], [0.5, 0.1, 0.9]])
    assert mrr(target_ranks(scores.numpy())) == pytest.approx((1 / 2 + 1 / 2 + 1 / 1) / 3)


def test_gathered_ddp_equals_one_process_with_the_whole_batch(pretrained, data, tmp_path):
    one = finetune(pretrained, data, tmp_path / 'one', batch_size=8, total_batch=8)
    two = finetune(pretrained, data, tmp_path / 'two', torchrun=2, batch_size=4, total_batch=8)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stdout + two.stderr
    assert '4 x 1 (accum) x 2 (world)' in two.stdout
    assert_same_params(params(tmp_path / 'one'), params(tmp_path / 'two'), atol=2e-6)


def test_gradcache_accumulation_equals_the_whole_batch(pretrained, data, tmp_path):
    one = finetune(pretrained, data, tmp_path / 'one', batch_size=8, total_batch=8)
    acc = finetune(pretrained, data, tmp_path / 'acc', batch_size=2, total_batch=8)
    assert one.returncode == 0 and acc.returncode == 0, acc.stderr
    assert '2 x 4 (accum) x 1 (world)' in acc.stdout
    assert_same_params(params(tmp_path / 'one'), params(tmp_path / 'acc'), atol=2e-6)


def test_resume_is_exact(pretrained, data, tmp_path):
    kw = dict(dropout=0.1, augment_prob=0.5, max_steps=4, ckpt_interval=2)
    assert finetune(pretrained, data, tmp_path / 'ref', **kw).returncode == 0
    assert finetune(pretrained, data, tmp_path / 'run', **{**kw, 'max_steps': 2}).returncode == 0
    r = finetune(pretrained, data, tmp_path / 'run', **{**kw, 'init_from': 'resume'})
    assert r.returncode == 0 and 'resuming from' in r.stdout, r.stderr
    a, b = params(tmp_path / 'ref'), params(tmp_path / 'run')
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize('task, metric', [('retrieval', 'mrr_text-code'), ('clone', 'f1')])
def test_each_exit_gets_its_head_and_metric(pretrained, data, tmp_path, task, metric):
    r = finetune(pretrained, data, tmp_path, task=task, max_steps=2, eval_interval=2)
    assert r.returncode == 0, r.stderr
    ck = load_checkpoint(list_checkpoints(tmp_path)[-1])
    heads = 'proj.' if task == 'retrieval' else 'classifier.'
    assert {k.split('.')[1] for k in ck['model'] if k.startswith(heads)} == {'0', '1'}
    assert f'exit 2: {metric}' in r.stdout and f'exit 4: {metric}' in r.stdout
    model = MoSE.load(list_checkpoints(tmp_path)[-1])
    assert model.config.proj_heads == (task == 'retrieval') and model.config.n_classes == (2 if task == 'clone' else 0)


def test_single_exit_baseline_keeps_k_layers(pretrained, data, tmp_path):
    r = finetune(pretrained, data, tmp_path, single_exit=2, max_steps=1)
    assert r.returncode == 0, r.stderr
    model = MoSE.load(list_checkpoints(tmp_path)[-1])
    assert model.config.n_layer == 2 and model.config.exit_layers == (2,) and len(model.proj) == 1


# -----------------------------------------------------------------------------
# inputs

def test_instructions_are_byte_exact(tok):
    assert CODE_INSTRUCTION.format(language='python') == 'Represent this python code snippet for retrieval:'
    assert QUERY_INSTRUCTION == 'Represent this code description for retrieving supporting snippets of code:'
    ids = tok.code_input('def f(): pass', 'Python')
    assert ids == [tok.sep_id] + tok.encode('Represent this python code snippet for retrieval:') + [tok.sep_id] + \
        tok.encode('def f(): pass') + [tok.cls_id]
    assert tok.decode(tok.query_input('sum two numbers')) == \
        '<sep>Represent this code description for retrieving supporting snippets of code:<sep>sum two numbers<cls>'


CODE = "def total(items):\n    total = 0\n    for item in items:\n        total += item\n    return total  # ok\n"


def test_augmentation_replaces_only_frequent_long_words_consistently():
    out = augment_code(CODE, np.random.default_rng(0))
    # 'total' (4x) and 'item'/'items'? items: 2x (no), item: 2x (no), 'total' is the only word > 2 times, >= 3 chars
    assert 'total' not in out.split('(')[0] and out.count('total') == 0
    new = out.split()[1].split('(')[0]
    assert out == CODE.replace('total', new) and new.isidentifier() and new != 'total'
    assert augment_code(CODE, np.random.default_rng(0)) == out  # deterministic given the seed
    assert augment_code(CODE, np.random.default_rng(1)) != out
    assert augment_code("x = y + z\nx = 1\nx = 2\n", np.random.default_rng(0)) == "x = y + z\nx = 1\nx = 2\n"  # short


def test_augmentation_streams_of_the_two_kinds_differ():
    """Position g of the text-code stream and position g of the code-code stream draw different
    augmentations (the two kinds' names have the same length, which once keyed the generator)."""
    for g in range(16):
        a, b = augment_rng(1337, 'text-code', g).random(4), augment_rng(1337, 'code-code', g).random(4)
        assert not np.array_equal(a, b), g
        assert np.array_equal(a, augment_rng(1337, 'text-code', g).random(4))  # a pure function of the position
    old = lambda seed, kind, g: np.random.default_rng([seed, g, len(kind)])  # the collision this guards against
    assert np.array_equal(old(1337, 'text-code', 0).random(4), old(1337, 'code-code', 0).random(4))


def test_augmentation_never_touches_natural_language():
    rng = np.random.default_rng(0)
    text = 'Return the total of the items, the total of all totals total.'
    q, c = retrieval_texts({'kind': 'text-code', 'query': text, 'code': CODE}, rng, 1.0)
    assert q == text and c != CODE
    q, c = retrieval_texts({'kind': 'code-code', 'query': CODE, 'code': CODE}, rng, 1.0)
    assert q != CODE and c != CODE  # both sides of a code-code pair are code
    q, c = retrieval_texts({'kind': 'code-code', 'query': CODE, 'code': CODE}, rng, 0.0)
    assert q == CODE and c == CODE



def test_validation_mrr_is_evaluate_mrr(data, tok):
    """finetune's validation and evaluate.py rank a pool smaller than one batch of candidates alike
    (every pair a candidate of every query): the same MRR at every exit, whatever the batch size."""
    seen, rows = set(), []
    for r in read_pairs(str(data / 'valid.jsonl')) + read_pairs(str(data / 'train.jsonl')):
        if (r['kind'], r['code']) not in seen:  # no two equal candidates in a pool: no exact ties
            seen.add((r['kind'], r['code']))
            rows.append(r)
    torch.manual_seed(0)
    m = MoSE(MoSEConfig(vocab_size=tok.n_vocab, pad_id=tok.pad_id, n_layer=4, n_embd=32, n_head=4, n_kv_head=1,
                        intermediate_size=96, exit_layers=(2, 4), max_seq_len=128, proj_heads=True))
    ours = validate(m, 'retrieval', rows, tok, 96, 3, contextlib.nullcontext(), 'cpu')
    fn = encoder(m.eval(), [2, 4])  # validate leaves the model training, as it found it in finetune.py
    encode = lambda seqs, what, lengths=None: batched_forward(fn, seqs, 5, tok.pad_id, lengths=lengths, what=None)
    csn = {'python': [{**r, 'language': r['code_lang']} for r in rows if r['kind'] == 'text-code']}
    theirs = {'text-code': benchmarks.eval_csn(csn, tok, encode, [2, 4], 96, {})[0],
              'code-code': benchmarks.eval_code_code([r for r in rows if r['kind'] == 'code-code'], tok, encode,
                                                     [2, 4], 96, {})[0]}
    for kind, res in theirs.items():
        assert res['languages' if kind == 'text-code' else 'batches'] and res['exits']['2']['mrr'] > 0
        for e in (2, 4):
            assert ours[e][f'mrr_{kind}'] == pytest.approx(res['exits'][str(e)]['mrr'], rel=1e-9)


# -----------------------------------------------------------------------------
# bad input

def check_error(r, *needles):
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and 'Traceback' not in r.stderr, r.stderr
    for n in needles:
        assert n in last, last


@pytest.mark.parametrize('weighting', ['depth', 'uniform'])
def test_exit_weighting_is_the_logged_loss(pretrained, data, tmp_path, weighting):
    """The logged loss of step 1 is the sum of the per-exit losses with the weights the setting names:
    exit / n_layer (paper 2.2) or 1 at every exit."""
    out = tmp_path / weighting
    r = finetune(pretrained, data, out, max_steps=1, exit_weighting=weighting)
    assert r.returncode == 0, r.stderr
    rec = next(json.loads(line) for line in open(out / 'log.jsonl') if '"loss"' in line)
    n_layer = load_checkpoint(list_checkpoints(out)[-1])['model_config']['n_layer']
    w = (lambda e: e / n_layer) if weighting == 'depth' else (lambda e: 1.0)
    expected = sum(w(int(e)) * x['loss'] for e, x in rec['exits'].items())
    assert len(rec['exits']) > 1
    assert rec['loss'] == pytest.approx(expected, rel=1e-5)


def test_unknown_exit_weighting(pretrained, data, tmp_path):
    check_error(finetune(pretrained, data, tmp_path, exit_weighting='linear'), "exit_weighting='linear'")


def test_lr_follows_the_milestones(pretrained, data, tmp_path):
    """The logged lr of each step: the peak after warmup, times each milestone's multiplier from its step on."""
    r = finetune(pretrained, data, tmp_path, max_steps=4, warmup_steps=0, lr_milestones='[(2, 0.3), (3, 0.1)]')
    assert r.returncode == 0, r.stderr
    lrs = [json.loads(line)['lr'] for line in open(tmp_path / 'log.jsonl') if '"lr"' in line]
    assert lrs == pytest.approx([1e-3, 1e-3, 3e-4, 1e-4], rel=1e-9)


def test_malformed_milestones(pretrained, data, tmp_path):
    check_error(finetune(pretrained, data, tmp_path, lr_milestones='[300]'), 'lr_milestones=[300]')


def test_unknown_task(pretrained, data, tmp_path):
    check_error(finetune(pretrained, data, tmp_path, task='ranking'), "unknown task 'ranking'")


def test_missing_checkpoint_says_what_to_run(data, tmp_path):
    (tmp_path / 'empty').mkdir()
    check_error(finetune(str(tmp_path / 'empty'), data, tmp_path / 'out'), 'python pretrain.py config/mose_tiny.py')


def test_checkpoint_of_another_tokenizer(data, tmp_path, tok):
    m = MoSE(MoSEConfig(vocab_size=49156, n_layer=2, n_embd=32, n_head=4, n_kv_head=1, intermediate_size=96,
                        exit_layers=(1, 2)))
    save_checkpoint(str(tmp_path / 'pre'), 1, {'model': m.state_dict(), 'model_config': config_to_dict(m.config),
                                                'step': 1}, keep_last=1)
    check_error(finetune(str(tmp_path / 'pre'), data, tmp_path / 'out'), 'vocab_size 49156', 'n_vocab 100281')


def test_unwritable_out_dir(pretrained, data, tmp_path):
    check_error(finetune(pretrained, data, '/dev/null/ft'), "out_dir '/dev/null/ft' is not writable")


def test_pairs_with_missing_ids(pretrained, data, tmp_path):
    bad = tmp_path / 'bcb'
    bad.mkdir()
    (bad / 'data.jsonl').write_text(json.dumps({'idx': '1', 'func': 'int f() { return 1; }'}) + '\n')
    for split in ('train', 'valid'):
        (bad / f'{split}.txt').write_text('1\t7\t1\n8\t9\t0\n')
    check_error(finetune(pretrained, data, tmp_path / 'out', task='clone', bcb_dir=str(bad)),
                'no usable pairs', 'missing')


def test_text_code_only_batches(data, tok):
    """code_code=False: every row of a batch is a text-code pair (documentation query, function), and
    the batch holds as many of them as a mixed batch holds of both kinds; a file without the kind asked
    for is an error naming it."""
    from finetune import make_batch, read_training_pairs
    from training import EpochSampler
    for kinds in (('text-code',), ('text-code', 'code-code')):
        streams, _, _ = read_training_pairs('retrieval', str(data / 'train.jsonl'), str(data / 'valid.jsonl'), '',
                                            kinds)
        assert list(streams) == list(kinds)
        orders = {k: EpochSampler(len(v), 7 + i) for i, (k, v) in enumerate(streams.items())}
        seqs, _ = make_batch(0, streams, orders, 8 // len(streams), tok, 96)
        queries, codes = seqs[:8], seqs[8:]
        text_queries = {tuple(tok.query_input(r['query'], 96)) for r in streams['text-code']}
        assert len(queries) == len(codes) == 8
        assert sum(tuple(q) in text_queries for q in queries) == (8 if kinds == ('text-code',) else 4)
    only_code = data / 'code-only.jsonl'
    only_code.write_text(''.join(l for l in open(data / 'train.jsonl') if '"code-code"' in l))
    with pytest.raises(Exception, match='code-only.jsonl: no text-code pairs'):
        read_training_pairs('retrieval', str(only_code), str(data / 'valid.jsonl'), '', ('text-code',))
