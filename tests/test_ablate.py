"""Tests of ablate.py. Run: python -m pytest tests/test_ablate.py -q"""
import gzip
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch

from ablate import compare, mean_std, paired_bootstrap, split_argv
from model import MoSE, MoSEConfig, config_to_dict
from tokenizer import get_tokenizer
from training import list_checkpoints, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -----------------------------------------------------------------------------
# the statistics, on planted numbers

def test_paired_bootstrap_matches_scipy_and_the_normal_interval():
    rng = np.random.default_rng(1)
    a = rng.normal(0.5, 0.2, size=(1, 2000))
    b = a - 0.03 + rng.normal(0, 0.1, size=(1, 2000))   # a is better by 0.03 on average
    diff, lo, hi = paired_bootstrap({'x': a}, {'x': b}, n_boot=4000)
    d = (a - b)[0]
    assert diff == pytest.approx(d.mean(), abs=1e-12)
    ref = scipy.stats.bootstrap((d,), np.mean, n_resamples=4000, method='percentile',
                                random_state=0).confidence_interval
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))      # the normal approximation of the same interval
    for x, y in ((lo, ref.low), (hi, ref.high), (lo, d.mean() - half), (hi, d.mean() + half)):
        assert x == pytest.approx(y, abs=0.1 * half)
    assert lo < 0.03 < hi


def test_paired_bootstrap_averages_seeds_and_languages():
    a = {'go': np.array([[1.0, 0.0], [0.0, 1.0]]), 'py': np.full((2, 3), 0.5)}   # (seeds, queries)
    b = {'go': np.zeros((2, 2)), 'py': np.full((2, 3), 0.5)}
    diff, lo, hi = paired_bootstrap(a, b, n_boot=500)
    assert diff == pytest.approx((0.5 + 0.0) / 2)   # go: +0.5 per query after the seed mean; py: 0
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)  # every query of go differs by 0.5: no spread
    same = paired_bootstrap({'x': np.ones((1, 5))}, {'x': np.ones((1, 5))}, n_boot=100)
    assert same == (0.0, 0.0, 0.0)


def test_compare_and_mean_std_against_numpy():
    rng = np.random.default_rng(0)
    multi = {s: {'go': rng.random(7), 'py': rng.random(9)} for s in (0, 1, 2)}
    single = {s: {'go': rng.random(7), 'py': rng.random(9)} for s in (0, 1, 2)}
    out = compare(multi, single, n_boot=300)
    assert set(out) == {'avg', 'go', 'py'}
    per_seed = [np.mean([multi[s]['go'].mean(), multi[s]['py'].mean()]) for s in (0, 1, 2)]
    assert out['avg']['multi'] == pytest.approx(np.mean(per_seed))
    assert out['avg']['multi_std'] == pytest.approx(np.std(per_seed, ddof=1))
    assert out['go']['single'] == pytest.approx(np.mean([single[s]['go'].mean() for s in (0, 1, 2)]))
    assert out['py']['diff'] == pytest.approx(np.mean([multi[s]['py'] - single[s]['py'] for s in (0, 1, 2)]))
    assert out['avg']['ci'][0] <= out['avg']['diff'] <= out['avg']['ci'][1]
    assert mean_std([0.25]) == (0.25, None)


def test_split_argv_sends_unknown_keys_and_files_to_finetune():
    mine, theirs = split_argv(['config/finetune_tiny.py', '--seeds=0,1', '--max_steps', '20', '--exits', '2',
                               '--learning_rate=1e-3', '--help'], {'seeds', 'exits'})
    assert mine == ['--seeds=0,1', '--exits=2', '--help']
    assert theirs == ['config/finetune_tiny.py', '--max_steps=20', '--learning_rate=1e-3']


# -----------------------------------------------------------------------------
# the script, end to end on a tiny pre-trained model

def write_csn(path, lang, n):
    with gzip.open(path, 'wt', encoding='utf-8') as f:
        for i in range(n):
            doc = f"Add {i} to the value and return it ({lang})."
            code = f"def add_{lang}_{i}(x):\n    \"\"\"{doc}\"\"\"\n" + "    x = x + 1\n" * (i % 5) + \
                f"    return x + {i}\n"
            f.write(json.dumps({'url': f'https://x/{lang}/{i}', 'code': code, 'language': lang, 'docstring': doc,
                                'docstring_tokens': doc.split(), 'repo': 'r', 'path': 'p.py'}) + '\n')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp('ablate')
    tok = get_tokenizer('cl100k_base')
    torch.manual_seed(0)
    m = MoSE(MoSEConfig(vocab_size=tok.n_vocab, pad_id=tok.pad_id, n_layer=4, n_embd=32, n_head=4, n_kv_head=1,
                        intermediate_size=96, exit_layers=(2, 4), max_seq_len=128))
    save_checkpoint(str(d / 'pre'), 10, {'model': m.state_dict(), 'model_config': config_to_dict(m.config),
                                         'tokenizer': tok.meta(), 'step': 10}, keep_last=1)
    rows = [{'kind': kind, 'query': f"def g{i}(a):\n    return a * {i}\n" if kind == 'code-code' else f"times {i}",
             'query_lang': 'python' if kind == 'code-code' else None, 'code': f"def h{i}(b):\n    return {i} * b\n",
             'code_lang': 'python', 'repo': 'r', 'id': f"{kind}-{i}"}
            for i in range(16) for kind in ('text-code', 'code-code')]
    for split, part in (('train', rows[:24]), ('valid', rows[24:])):
        (d / f'{split}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in part))
    os.makedirs(d / 'csn')
    write_csn(str(d / 'csn' / 'go.jsonl.gz'), 'go', 8)
    write_csn(str(d / 'csn' / 'python.jsonl.gz'), 'python', 12)
    return d


def ablate(d, *args, **kw):
    kw = {'init_from': d / 'pre', 'seeds': '0', 'exits': '2,4', 'out_dir': d / 'abl', 'csn_dir': d / 'csn',
          'candidates': 10, 'n_boot': 200, 'train_pairs': d / 'train.jsonl', 'valid_pairs': d / 'valid.jsonl',
          'batch_size': 8, 'total_batch': 8, 'max_len': 64, 'max_steps': 2, 'log_interval': 1, 'eval_max': 8,
          'dropout': 0.0, 'dtype': 'float32', 'learning_rate': 1e-3, **kw}
    cmd = [sys.executable, os.path.join(ROOT, 'ablate.py'), *args] + [f"--{k}={v}" for k, v in kw.items()]
    return subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'})


def test_end_to_end_table_json_and_rerun_skips(setup):
    d = setup
    r = ablate(d)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '[3/3]' in r.stdout and 'eta' in r.stdout
    ab = json.loads((d / 'abl' / 'ablation.json').read_text())
    assert list(ab['exits']) == ['2', '4'] and ab['seeds'] == [0]
    for e, m in ab['exits'].items():
        for metric in ('mrr', 'recall@1'):
            assert set(m[metric]) == {'avg', 'go', 'python'}
            for row in m[metric].values():
                vals = [row['multi'], row['single'], row['diff'], *row['ci']]
                assert all(math.isfinite(v) for v in vals) and row['multi_std'] is None
                assert 0 <= row['multi'] <= 1 and row['ci'][0] <= row['diff'] <= row['ci'][1]
            # the average row averages the languages (evaluate.py's csn average)
            langs = m[metric]['go']['multi'], m[metric]['python']['multi']
            assert m[metric]['avg']['multi'] == pytest.approx(sum(langs) / 2)
        # MRR >= Recall@1 query by query; the multi-exit MRR is evaluate.py's own
        assert m['mrr']['avg']['multi'] >= m['recall@1']['avg']['multi']
        res = json.loads((d / 'abl' / 'multi-seed0' / 'eval' / 'results.json').read_text())
        assert m['mrr']['avg']['multi'] == pytest.approx(res['tasks']['csn']['exits'][e]['mrr'])
    # the single-exit runs kept K layers; the multi-exit run all of them
    for name, n_layer in (('single2-seed0', 2), ('single4-seed0', 4), ('multi-seed0', 4)):
        ck = torch.load(list_checkpoints(str(d / 'abl' / name))[-1], map_location='cpu', weights_only=True)
        assert ck['model_config']['n_layer'] == n_layer and ck['step'] == 2 and ck['config']['seed'] == 0
    md = (d / 'abl' / 'ablation.md').read_text()
    table = [l for l in md.splitlines() if l.startswith(('2 ', '4 '))]
    assert len(table) == 2 + 4 and 'Δ R@1 [95% CI]' in md   # 2 exits, then 2 exits x 2 languages
    # a rerun trains and evaluates nothing: the same files, untouched
    files = [p for p in (d / 'abl').rglob('*') if p.name.startswith('ckpt_') or p.name == 'results.json']
    before = {p: p.stat().st_mtime_ns for p in files}
    r2 = ablate(d)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert r2.stdout.count('finished before: skipped') == 3
    assert {p: p.stat().st_mtime_ns for p in files} == before and len(files) == 6
    assert json.loads((d / 'abl' / 'ablation.json').read_text())['exits'] == ab['exits']
    # other fine-tuning settings in the same out_dir: a one-line error, nothing run
    r3 = ablate(d, max_steps=3)
    assert r3.returncode != 0 and r3.stderr.strip().startswith('error: ') and len(r3.stderr.strip().splitlines()) == 1
    assert 'finetune differ' in r3.stderr and {p: p.stat().st_mtime_ns for p in files} == before


@pytest.mark.parametrize('kw,needle', [
    ({'exits': '2,3'}, "exit 3 is not an exit of"),
    ({'seeds': ''}, "--seeds=''"),
    ({'init_from': 'nowhere'}, "no checkpoint in nowhere"),
])
def test_bad_input_is_one_line_before_any_run(setup, kw, needle):
    d = setup
    r = ablate(d, **{'out_dir': d / 'bad', **kw})
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: ') and needle in lines[0], r.stderr
    assert not (d / 'bad').exists()
