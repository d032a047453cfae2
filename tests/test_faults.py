"""The fault and bad-input suite. Run: python -m pytest tests/test_faults.py -q

- Pre-training is killed with SIGKILL at random points (in the middle of a step, in the middle of
  a checkpoint write) and resumed, several times in one run: the final parameters and the logged
  losses equal those of an uninterrupted run, and every checkpoint on disk is readable after
  every kill.
- Every stage is given bad input: it exits non-zero with one line `error: ...` that names the
  problem, prints no traceback, and leaves its output directory exactly as it was (nothing
  created, nothing half-written).
- No loader executes code from a checkpoint (weights_only=True).
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import losses, make_icc_dataset, stdlib_sources
from model import MoSE, MoSEConfig, config_to_dict
from tokenizer import get_tokenizer
from training import list_checkpoints, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
PRETRAIN = dict(n_layer=4, n_embd=32, n_head=4, n_kv_head=1, intermediate_size=96, exit_layers=[2, 4],
                attn_dropout=0.1, resid_dropout=0.1, embd_dropout=0.1, block_size=64, batch_size=4,
                total_batch_tokens=256, log_interval=1, eval_interval=1000, eval_batches=1, ckpt_interval=3,
                keep_last=2, warmup_steps=2, learning_rate=1e-3, max_steps=12, dtype='float32')
# a stage run under this wrapper is SIGKILLed by itself in the middle of its n-th checkpoint write,
# after half of the bytes reached the disk
KILL_IN_SAVE = '''
import os, runpy, signal, sys, torch
n, real_save, count = int(os.environ['KILL_IN_SAVE']), torch.save, [0]
def save(obj, f, *a, **kw):
    count[0] += 1
    real_save(obj, f, *a, **kw)
    if count[0] == n:
        f.flush(); f.truncate(f.tell() // 2); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
script = sys.argv.pop(1)
sys.argv[0] = script
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name='__main__')
'''


@pytest.fixture(scope='module')
def tok():
    return get_tokenizer('cl100k_base')


@pytest.fixture(scope='module')
def icc(tmp_path_factory):
    return make_icc_dataset(str(tmp_path_factory.mktemp('icc')))


def cli(kw):
    return [f"--{k}={v!r}" if isinstance(v, str) else f"--{k}={v}" for k, v in kw.items()]


def pretrain_cmd(icc, out, **kw):
    return [sys.executable, 'pretrain.py'] + cli({**PRETRAIN, 'data_dir': icc, 'out_dir': str(out), **kw})


def logged_step(out):
    try:
        return max(losses(out), default=0)
    except (OSError, ValueError):  # the file is being replaced or a line is being written
        return 0


def assert_every_checkpoint_readable(out):
    found = list_checkpoints(out)
    for p in found:
        ck = load_checkpoint(p)
        assert {'model', 'optimizer', 'rng', 'step', 'data_pos'} <= set(ck), p
    return [load_checkpoint(p)['step'] for p in found]


# -----------------------------------------------------------------------------
# SIGKILL at random points, then resume

@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_kills_then_resume_equal_an_uninterrupted_run(icc, tmp_path, seed):
    rng = random.Random(seed)
    n = PRETRAIN['max_steps']
    ref = subprocess.run(pretrain_cmd(icc, tmp_path / 'ref'), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    wrapper = tmp_path / 'kill_in_save.py'
    wrapper.write_text(KILL_IN_SAVE)
    out = tmp_path / 'run'
    # three faults in a random order: two in the middle of a step, one in a checkpoint write
    faults = rng.sample(['step', 'step', 'save'], 3)
    kills = 0
    for fault in faults:
        start = max([load_checkpoint(p)['step'] for p in list_checkpoints(out)], default=0)
        init = 'resume' if start else 'scratch'
        cmd = pretrain_cmd(icc, out, init_from=init)
        if fault == 'save':  # the 1st or 2nd checkpoint this run writes
            env = {**ENV, 'KILL_IN_SAVE': str(rng.randint(1, 2))}
            proc = subprocess.run([sys.executable, str(wrapper)] + cmd[1:], cwd=ROOT, env=env, capture_output=True)
            assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
            assert list(out.glob('*.tmp')), "the kill did not interrupt a write"
        else:  # after a random step has been logged, at a random moment of the next one
            target = rng.randint(start + 1, n - 2)
            proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline and logged_step(out) < target:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.03))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
        kills += 1
        steps = assert_every_checkpoint_readable(out)
        assert all(s % PRETRAIN['ckpt_interval'] == 0 for s in steps)
    last = subprocess.run(pretrain_cmd(icc, out, init_from='resume' if list_checkpoints(out) else 'scratch'),
                          cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert last.returncode == 0, last.stdout + last.stderr
    assert kills == 3
    assert losses(out) == losses(tmp_path / 'ref')  # identical logged losses at every step
    a = load_checkpoint(list_checkpoints(tmp_path / 'ref')[-1])['model']
    b = load_checkpoint(list_checkpoints(out)[-1])['model']
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(out.glob('*.tmp')) or all(p.name.endswith('.pt.tmp') for p in out.glob('*.tmp'))


# -----------------------------------------------------------------------------
# bad input to every stage

def snapshot(path):
    """Every file under path with its size and modification time; None if path does not exist."""
    if not os.path.exists(path):
        return None
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.relpath(os.path.join(d, f), path)] = (st.st_size, st.st_mtime_ns)
    return out


def write_jsonl(path, rows, bad_line=None):
    lines = [json.dumps(r) for r in rows]
    if bad_line is not None:
        lines[bad_line - 1] = lines[bad_line - 1][:-5]  # cut short: not JSON
    path.write_text('\n'.join(lines) + '\n')
    return path


def pair(i, query=None, code=None, kind='text-code'):
    return {'kind': kind, 'query': f"return {i} plus the argument" if query is None else query,
            'query_lang': 'python' if kind == 'code-code' else None,
            'code': f"def f{i}(x):\n    return x + {i}\n" if code is None else code, 'code_lang': 'python',
            'repo': f'r{i % 3}', 'id': f'p{i}'}


def tiny_checkpoint(out, tok, step=1, **kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=tok.n_vocab, pad_id=tok.pad_id, n_layer=2, n_embd=32, n_head=4, n_kv_head=1,
               intermediate_size=64, exit_layers=(1, 2), max_seq_len=128, **kw)
    m = MoSE(MoSEConfig(**cfg))
    return save_checkpoint(str(out), step, {'model': m.state_dict(), 'model_config': config_to_dict(m.config),
                                            'tokenizer': tok.meta(), 'step': step, 'config': {}}, keep_last=5)


@pytest.fixture(scope='module')
def world(tmp_path_factory, tok, icc):
    """Good inputs of every stage, from which each case spoils one thing."""
    d = tmp_path_factory.mktemp('world')
    corpus = d / 'corpus'
    for name, text in stdlib_sources(4):
        (corpus / name.replace('.py', '')).mkdir(parents=True)
        (corpus / name.replace('.py', '') / name).write_text(text)
    write_jsonl(d / 'train.jsonl', [pair(i) for i in range(16)] + [pair(i, kind='code-code') for i in range(16)])
    write_jsonl(d / 'valid.jsonl', [pair(i) for i in range(4)] + [pair(i, kind='code-code') for i in range(4)])
    shutil.copytree(icc, d / 'icc')
    tiny_checkpoint(d / 'pre', tok)
    tiny_checkpoint(d / 'ft', tok, proj_heads=True)
    (d / 'bcb').mkdir()
    write_jsonl(d / 'bcb' / 'data.jsonl', [{'idx': str(i), 'func': f"int f{i}() {{ return {i}; }}"} for i in range(8)])
    for split in ('train', 'valid'):
        (d / 'bcb' / f'{split}.txt').write_text(''.join(f"{i}\t{(i + 1) % 8}\t{i % 2}\n" for i in range(8)))
    (d / 'data' / 'retrieval').mkdir(parents=True)
    write_jsonl(d / 'data' / 'retrieval' / 'test.jsonl', [pair(i, kind='code-code') for i in range(8)])
    return d


FT = dict(batch_size=4, total_batch=4, max_len=64, max_steps=2, eval_interval=100, eval_max=4, ckpt_interval=100,
          dtype='float32')


def stage(name, world, out, **kw):
    """The command line of one stage on the good inputs, with kw overriding them."""
    if name == 'prepare':
        base = dict(task='icc', input=str(world / 'corpus'), out_dir=str(out), max_len=128, num_proc=1)
    elif name == 'pretrain':
        base = {**PRETRAIN, 'data_dir': str(world / 'icc'), 'out_dir': str(out), 'max_steps': 2}
    elif name == 'finetune':
        base = {**FT, 'task': 'retrieval', 'init_from': str(world / 'pre'), 'out_dir': str(out),
                'train_pairs': str(world / 'train.jsonl'), 'valid_pairs': str(world / 'valid.jsonl')}
    else:
        base = dict(task='code-code', init_from=str(world / 'ft'), out_dir=str(out), threads=1, plot=False,
                    pairs_dir=str(world / 'data' / 'retrieval'))
    return [sys.executable, f'{name}.py'] + cli({**base, **kw})


def spoil(case, world, tmp, tok):
    """(stage, overrides, fragments the error must hold) of one bad-input case; builds the bad files in tmp."""
    icc = tmp / 'icc'
    if case.startswith('pretrain'):
        shutil.copytree(world / 'icc', icc)
    if case == 'prepare/malformed-jsonl':
        p = write_jsonl(tmp / 'files.jsonl', [{'repo_name': 'a', 'content': 'x = 1\n'}] * 3, bad_line=2)
        return 'prepare', dict(input=str(p)), ['files.jsonl:2']
    if case == 'prepare/empty-snippets':
        p = write_jsonl(tmp / 'files.jsonl', [{'repo_name': f'r{i}', 'content': ''} for i in range(4)])
        return 'prepare', dict(input=str(p)), ['no usable']
    if case == 'prepare/missing-input':
        return 'prepare', dict(input=str(tmp / 'nothing')), [str(tmp / 'nothing')]
    if case == 'pretrain/truncated-shard':
        with open(icc / 'train_0000.bin', 'r+b') as f:
            f.truncate(os.path.getsize(icc / 'train_0000.bin') - 10)
        return 'pretrain', dict(data_dir=str(icc)), ['train_0000.bin']
    if case == 'pretrain/wrong-tokenizer':
        m = json.loads((icc / 'manifest.json').read_text())
        m['tokenizer'].update(name='starcoder2', n_vocab=49156)
        (icc / 'manifest.json').write_text(json.dumps(m))
        return 'pretrain', dict(data_dir=str(icc)), ['manifest.json', 'tokenizer']
    if case == 'pretrain/empty-snippets':  # every sequence is <sep> <sep> <cls>: nothing to mask
        from data import write_shard
        write_shard(str(icc / 'train_0000.bin'), [[tok.sep_id, tok.sep_id, tok.cls_id]] * 48, [1, 0] * 24)
        m = json.loads((icc / 'manifest.json').read_text())
        m['splits']['train']['tokens'] = 48 * 3
        (icc / 'manifest.json').write_text(json.dumps(m))
        return 'pretrain', dict(data_dir=str(icc)), ['no token to mask']
    if case == 'pretrain/missing-checkpoint':
        return 'pretrain', dict(init_from='resume', out_dir=str(tmp / 'empty')), ['holds no checkpoint']
    if case == 'pretrain/other-config-checkpoint':
        return 'pretrain', dict(init_from='resume', n_embd=64, n_head=4), ['checkpoint of another config', 'n_embd']
    if case == 'finetune/malformed-jsonl':
        p = write_jsonl(tmp / 'train.jsonl', [pair(i) for i in range(8)], bad_line=3)
        return 'finetune', dict(train_pairs=str(p)), ['train.jsonl:3']
    if case == 'finetune/empty-snippets':
        p = write_jsonl(tmp / 'train.jsonl', [pair(i, query='', code='') for i in range(8)])
        return 'finetune', dict(train_pairs=str(p)), ['train.jsonl:1', 'empty']
    if case == 'finetune/missing-checkpoint':
        return 'finetune', dict(init_from=str(tmp / 'nothing.pt')), ['nothing.pt']
    if case == 'finetune/wrong-tokenizer':
        m = MoSE(MoSEConfig(vocab_size=49156, n_layer=2, n_embd=32, n_head=4, n_kv_head=1, intermediate_size=64,
                            exit_layers=(1, 2)))
        save_checkpoint(str(tmp / 'pre'), 1, {'model': m.state_dict(), 'model_config': config_to_dict(m.config)}, 1)
        return 'finetune', dict(init_from=str(tmp / 'pre')), ['vocab_size 49156']
    if case == 'finetune/truncated-checkpoint':
        shutil.copytree(world / 'pre', tmp / 'pre')
        p = list_checkpoints(tmp / 'pre')[-1]
        with open(p, 'r+b') as f:
            f.truncate(os.path.getsize(p) // 3)
        return 'finetune', dict(init_from=str(tmp / 'pre')), ['not a readable checkpoint']
    if case == 'finetune/other-config-checkpoint':  # resume a retrieval run as a clone run
        return 'finetune', dict(init_from='resume', task='clone', bcb_dir=str(world / 'bcb')), ['checkpoint of another']
    if case == 'evaluate/malformed-jsonl':
        p = write_jsonl(tmp / 'test.jsonl', [pair(i, kind='code-code') for i in range(8)], bad_line=5)
        return 'evaluate', dict(pairs_dir=str(tmp)), ['test.jsonl:5']
    if case == 'evaluate/empty-snippets':
        p = write_jsonl(tmp / 'test.jsonl', [pair(i, query='', code='', kind='code-code') for i in range(8)])
        return 'evaluate', dict(pairs_dir=str(tmp)), ['test.jsonl:1', 'empty']
    if case == 'evaluate/missing-checkpoint':
        return 'evaluate', dict(init_from=str(tmp / 'nothing.pt')), ['nothing.pt']
    if case == 'evaluate/other-config-checkpoint':  # a clone classifier where a retrieval model is needed
        tiny_checkpoint(tmp / 'clone', tok, n_classes=2)
        return 'evaluate', dict(init_from=str(tmp / 'clone')), ['clone classifier']
    if case == 'evaluate/wrong-tokenizer':
        return 'evaluate', dict(tokenizer=str(tmp / 'no-tokenizer')), ['no-tokenizer']
    stage_name, what = case.split('/')
    if what == 'unknown-key':
        return stage_name, dict(lerning_rate=1e-3) if stage_name != 'prepare' else dict(max_lenn=5), ['unknown config key']
    if what == 'unwritable-out':
        return stage_name, dict(out_dir='/dev/null/out'), ['/dev/null/out']
    raise AssertionError(case)


STAGES = ('prepare', 'pretrain', 'finetune', 'evaluate')
CASES = [f'{s}/{c}' for s in STAGES for c in ('unknown-key', 'unwritable-out')] + [
    'prepare/malformed-jsonl', 'prepare/empty-snippets', 'prepare/missing-input',
    'pretrain/truncated-shard', 'pretrain/wrong-tokenizer', 'pretrain/empty-snippets', 'pretrain/missing-checkpoint',
    'pretrain/other-config-checkpoint',
    'finetune/malformed-jsonl', 'finetune/empty-snippets', 'finetune/missing-checkpoint', 'finetune/wrong-tokenizer',
    'finetune/truncated-checkpoint', 'finetune/other-config-checkpoint',
    'evaluate/malformed-jsonl', 'evaluate/empty-snippets', 'evaluate/missing-checkpoint',
    'evaluate/other-config-checkpoint', 'evaluate/wrong-tokenizer']


@pytest.fixture(scope='module')
def runs(tmp_path_factory, world):
    """Output directories holding a finished run of each stage: resume cases spoil these."""
    d = tmp_path_factory.mktemp('runs')
    for name in ('pretrain', 'finetune'):
        r = subprocess.run(stage(name, world, d / name), cwd=ROOT, env=ENV, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    return d


@pytest.mark.parametrize('case', CASES)
def test_bad_input_fails_cleanly(case, world, runs, tmp_path, tok):
    name, kw, fragments = spoil(case, world, tmp_path, tok)
    out = tmp_path / 'out'
    if kw.get('init_from') == 'resume' and 'out_dir' not in kw:  # the output directory of a finished run
        shutil.copytree(runs / name, out)
    kw.setdefault('out_dir', str(out))
    before = snapshot(kw['out_dir'])
    r = subprocess.run(stage(name, world, out, **kw), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0, r.stdout + r.stderr
    assert 'Traceback' not in r.stderr + r.stdout, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith('error')]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith('error: '), r.stderr
    for f in fragments:
        assert f in errors[0], errors[0]
    assert snapshot(kw['out_dir']) == before, "the failed run left output behind"


# -----------------------------------------------------------------------------
# a checkpoint never executes code

class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.mark.parametrize('name', ['pretrain', 'finetune', 'evaluate'])
def test_loading_a_checkpoint_never_executes_code(name, world, tmp_path, tok):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil'
    evil.mkdir()
    torch.save({'model': {'embed_tokens.weight': Payload(marker)}, 'model_config': {}, 'step': 1,
                'tokenizer': tok.meta()}, evil / 'ckpt_0000001.pt')
    if name == 'pretrain':  # resume from it
        shutil.copytree(world / 'icc', tmp_path / 'icc')
        kw = dict(init_from='resume', out_dir=str(evil), data_dir=str(tmp_path / 'icc'))
    else:
        kw = dict(init_from=str(evil), out_dir=str(tmp_path / 'out'))
    r = subprocess.run(stage(name, world, tmp_path / 'out', **kw), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode != 0 and 'not a readable checkpoint' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not marker.exists()
