"""Tests of pretrain.py and training.py. Run: python -m pytest tests/test_pretrain.py -q"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import losses, make_icc_dataset
from training import (EpochSampler, UserError, batch_rows, check_milestones, left_pad, list_checkpoints,
                      load_checkpoint, lr_at, mask_tokens, save_checkpoint)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(n_layer=4, n_embd=32, n_head=4, n_kv_head=1, intermediate_size=96, exit_layers=[2, 4],
            attn_dropout=0.1, resid_dropout=0.1, embd_dropout=0.1, block_size=64, batch_size=4,
            total_batch_tokens=512, log_interval=1, eval_interval=100, eval_batches=2, ckpt_interval=2,
            warmup_steps=2, learning_rate=1e-3, max_steps=8, dtype='float32')


@pytest.fixture(scope='module')
def icc(tmp_path_factory):
    return make_icc_dataset(str(tmp_path_factory.mktemp('icc')))


def args(**kw):
    return [f"--{k}={v!r}" if isinstance(v, str) else f"--{k}={v}" for k, v in {**TINY, **kw}.items()]


def pretrain(icc, out, *extra, torchrun=0, wait=True, **kw):
    cmd = [sys.executable, 'pretrain.py'] if not torchrun else \
        [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={torchrun}', '--standalone', 'pretrain.py']
    cmd += args(data_dir=icc, out_dir=str(out), **kw) + list(extra)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)


def final_params(out):
    return load_checkpoint(list_checkpoints(out)[-1])['model']


# -----------------------------------------------------------------------------
# end to end

def test_resume_after_sigkill_is_exact(icc, tmp_path):
    ref = pretrain(icc, tmp_path / 'ref')
    assert ref.returncode == 0, ref.stdout + ref.stderr
    proc = pretrain(icc, tmp_path / 'run', wait=False)
    log = tmp_path / 'run' / 'log.jsonl'
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill after step 3, with a checkpoint on disk
        if log.exists() and max(losses(tmp_path / 'run'), default=0) >= 3 and list_checkpoints(tmp_path / 'run'):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = pretrain(icc, tmp_path / 'run', init_from='resume')
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert 'resuming from' in resumed.stdout
    assert losses(tmp_path / 'run') == losses(tmp_path / 'ref')  # identical logged losses, steps 1..8
    a, b = final_params(tmp_path / 'ref'), final_params(tmp_path / 'run')
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_equals_single_process_with_accumulation(icc, tmp_path):
    kw = dict(attn_dropout=0.0, resid_dropout=0.0, embd_dropout=0.0, max_steps=3, ckpt_interval=3)
    one = pretrain(icc, tmp_path / 'one', **kw)  # 512 tokens = 4 x 64 x accum 2 x world 1
    two = pretrain(icc, tmp_path / 'two', torchrun=2, **kw)  # 4 x 64 x accum 1 x world 2
    assert one.returncode == 0 and two.returncode == 0, one.stdout + two.stdout + two.stderr
    assert '2 (accum) x 1 (world)' in one.stdout and '1 (accum) x 2 (world)' in two.stdout
    a, b = final_params(tmp_path / 'one'), final_params(tmp_path / 'two')
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    assert not torch.allclose(a['layers.0.mlp.c_fc.weight'], final_params(tmp_path / 'one')['layers.0.mlp.c_fc.weight'] + 1e-3)


def test_checkpoint_holds_what_resume_needs(icc, tmp_path):
    r = pretrain(icc, tmp_path, max_steps=4, keep_last=1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [os.path.basename(p) for p in list_checkpoints(tmp_path)] == ['ckpt_0000004.pt']
    ck = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert {'model', 'optimizer', 'rng', 'data_pos', 'config', 'model_config', 'step', 'tokenizer'} <= set(ck)
    assert ck['step'] == 4 and ck['data_pos'] == 4 * 8 and len(ck['rng']) == 1
    assert not any(k.startswith(('_orig_mod', 'module', 'model.')) for k in ck['model'])  # the raw model


@pytest.mark.parametrize('extra, pattern', [
    (['--batch_size=3'], r"total_batch_tokens=512 is not divisible by batch_size x block_size x world_size = 3 x 64 x 1 = 192"),
    (['--lerning_rate=1e-3'], r"unknown config key 'lerning_rate' \(nearest known: learning_rate"),
    (['--tokenizer=/nonexistent'], r"/nonexistent"),
    (['--block_size=32', '--total_batch_tokens=256'], r"built with max_len=64 > block_size=32"),
    (['--init_from=resume'], r"holds no checkpoint"),
    (['--out_dir=/dev/null/run'], r"out_dir '/dev/null/run' is not writable"),
    (['--objective=nsp'], r"its sequences are for objective='icc', this run's objective is 'nsp'.*--task=nsp"),
    (['--objective=sop'], r"objective='sop': expected one of icc, nsp"),
])
def test_bad_input_is_one_clear_line(icc, tmp_path, extra, pattern):
    import re
    r = pretrain(icc, tmp_path / 'out', *extra)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and re.search(pattern, last), r.stderr
    assert 'Traceback' not in r.stderr


def test_missing_and_mismatched_shards(icc, tmp_path):
    r = pretrain(str(tmp_path / 'nothing'), tmp_path / 'out')
    assert r.returncode != 0 and 'manifest.json' in r.stderr and 'prepare.py' in r.stderr and 'Traceback' not in r.stderr
    bad = make_icc_dataset(str(tmp_path / 'bad'))
    m = json.load(open(os.path.join(bad, 'manifest.json')))
    m['tokenizer']['n_vocab'] = 49156
    json.dump(m, open(os.path.join(bad, 'manifest.json'), 'w'))
    r = pretrain(bad, tmp_path / 'out2')
    assert r.returncode != 0 and 'n_vocab' in r.stderr and 'Traceback' not in r.stderr


def test_nsp_objective_trains_on_nsp_shards(icc, tmp_path):
    """objective='nsp' reads shards whose manifest says nsp (the same format) and logs nsp accuracy."""
    nsp = tmp_path / 'nsp'
    shutil.copytree(icc, nsp)
    m = json.load(open(nsp / 'manifest.json'))
    json.dump({**m, 'objective': 'nsp'}, open(nsp / 'manifest.json', 'w'))
    r = pretrain(str(nsp), tmp_path / 'out', objective='nsp', max_steps=2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'exit:mlm/acc/nsp_acc' in r.stdout and 'nsp acc' in r.stdout
    r = pretrain(str(nsp), tmp_path / 'out2', max_steps=2)  # the default objective refuses them
    assert r.returncode != 0 and "objective='nsp'" in r.stderr.strip().splitlines()[-1]


def test_resume_with_another_config_is_refused(icc, tmp_path):
    assert pretrain(icc, tmp_path, max_steps=2).returncode == 0
    r = pretrain(icc, tmp_path, '--n_embd=64', init_from='resume')
    assert r.returncode != 0 and 'checkpoint of another config' in r.stderr and 'n_embd=32' in r.stderr


def test_non_finite_loss_stops_before_saving(icc, tmp_path):
    r = pretrain(icc, tmp_path, learning_rate=1e30, warmup_steps=1, ckpt_interval=1)
    assert r.returncode != 0 and 'non-finite' in r.stderr
    for p in list_checkpoints(tmp_path):  # whatever was saved before is finite
        assert all(torch.isfinite(t).all() for t in load_checkpoint(p)['model'].values())


# -----------------------------------------------------------------------------
# pieces

def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    save_checkpoint(str(tmp_path), 1, {'w': torch.ones(3)}, keep_last=3)
    code = ("import sys, torch; sys.path.insert(0, %r); from training import save_checkpoint; "
            "save_checkpoint(%r, 2, {'w': torch.randn(64, 1024, 1024)}, keep_last=3)") % (ROOT, str(tmp_path))
    proc = subprocess.Popen([sys.executable, '-c', code])
    tmp = tmp_path / 'ckpt_0000002.pt.tmp'
    deadline = time.time() + 60
    while not tmp.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    assert tmp.exists(), "the write finished before it could be interrupted"
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ['ckpt_0000001.pt']
    assert torch.equal(load_checkpoint(list_checkpoints(str(tmp_path))[-1])['w'], torch.ones(3))


MILESTONES = [(120_000, 0.36), (185_000, 0.1), (220_000, 0.031), (230_000, 0.01), (240_000, 0.001)]


@pytest.mark.parametrize('step, expected', [
    (0, 6.24e-4 / 4000), (1999, 6.24e-4 / 2), (3999, 6.24e-4), (4000, 6.24e-4), (119_999, 6.24e-4),
    (120_000, 6.24e-4 * 0.36), (184_999, 6.24e-4 * 0.36), (185_000, 6.24e-5), (219_999, 6.24e-5),
    (220_000, 6.24e-4 * 0.031), (230_000, 6.24e-6), (239_999, 6.24e-6), (240_000, 6.24e-7), (244_999, 6.24e-7),
])
def test_lr_at_every_milestone(step, expected):
    assert lr_at(step, 6.24e-4, 4000, MILESTONES) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize('bad', [[300], [(300,)], [(300, 0.3), (200, 0.1)], [(300, 0.3), (300, 0.1)], [(-1, 0.3)],
                                 [(300, 0)], [(300.5, 0.3)], [('300', 0.3)], 0.3])
def test_malformed_milestones_are_refused(bad):
    with pytest.raises(UserError, match='lr_milestones='):
        check_milestones(bad)


def test_wellformed_milestones_pass():
    check_milestones([])
    check_milestones(MILESTONES)
    check_milestones([[300, 0.3], [350, 1]])  # lists, as a JSON config would give


def test_config_files_hold_the_paper_schedule():
    from configurator import apply_config
    src = open(os.path.join(ROOT, 'pretrain.py')).read()
    assert 'lr_milestones = [(120_000, 0.36), (185_000, 0.1), (220_000, 0.031), (230_000, 0.01), (240_000, 0.001)]' in src
    defaults = dict(n_layer=0, n_embd=0, n_head=0, n_kv_head=0, intermediate_size=0, rope_theta=0.0, norm_eps=0.0,
                    bias=False, attn_dropout=0.0, resid_dropout=0.0, embd_dropout=0.0, init_std=0.0, exit_layers=[],
                    conditional_size=0, total_batch_tokens=0, batch_size=0, block_size=0, max_steps=0)
    c = apply_config([os.path.join(ROOT, 'config/mose_1b.py')], defaults)
    assert c['total_batch_tokens'] == 4_194_304 and c['block_size'] == 2048 and c['max_steps'] == 245_000
    assert c['total_batch_tokens'] % (c['batch_size'] * c['block_size'] * 8) == 0  # one 8-GPU node


def test_masking_statistics():
    g = torch.Generator().manual_seed(0)
    special = {0, 1, 2, 3}
    idx = torch.randint(4, 1000, (64, 512), generator=g)
    idx[:, :50] = 3  # padding
    idx[:, 100::37] = 1  # separators
    inputs, pos, tgt = mask_tokens(idx, special, 1000, mask_id=2, generator=g)
    eligible = ~torch.isin(idx, torch.tensor(sorted(special)))
    assert eligible.view(-1)[pos].all()  # specials and padding are never selected
    assert abs(len(pos) / eligible.sum().item() - 0.15) < 0.005
    assert torch.equal(tgt, idx.view(-1)[pos])
    new = inputs.view(-1)[pos]
    masked, same = (new == 2).float().mean().item(), (new == tgt).float().mean().item()
    rand = 1 - masked - same
    assert abs(masked - 0.8) < 0.01 and abs(same - 0.1 - rand * 1e-3) < 0.01 and abs(rand - 0.1) < 0.01
    assert not torch.isin(new[(new != 2) & (new != tgt)], torch.tensor(sorted(special))).any()  # random ids are ordinary
    untouched = torch.ones(idx.numel(), dtype=torch.bool)
    untouched[pos] = False
    assert torch.equal(inputs.view(-1)[untouched], idx.view(-1)[untouched])


def test_sampling_is_without_replacement_and_reproducible():
    n = 37
    sample_index = lambda g, n, seed: EpochSampler(n, seed)(g)  # a fresh sampler: a pure function of (g, n, seed)
    epoch0 = [sample_index(g, n, 5) for g in range(n)]
    epoch1 = [sample_index(g, n, 5) for g in range(n, 2 * n)]
    assert sorted(epoch0) == list(range(n)) and sorted(epoch1) == list(range(n)) and epoch0 != epoch1
    assert epoch0 == [sample_index(g, n, 5) for g in range(n)]


@pytest.mark.parametrize('world, accum', [(1, 4), (2, 2), (4, 1)])
def test_ranks_take_disjoint_slices(world, accum):
    rows = [list(batch_rows(s, m, accum, world, r, 3)) for s in range(2) for m in range(accum) for r in range(world)]
    flat = sorted(x for r in rows for x in r)
    assert flat == list(range(2 * world * accum * 3))  # every position once, none twice


def test_left_pad_keeps_cls_last():
    out = left_pad([[5, 6, 9], [7, 9]], pad_id=0, multiple=4)
    assert out.tolist() == [[0, 5, 6, 9], [0, 0, 7, 9]]
