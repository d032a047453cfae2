"""Tests of configurator.py. Run: python -m pytest tests/test_configurator.py -q"""
import os
import subprocess
import sys

import pytest

from configurator import ConfigError, apply_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = {'batch_size': 8, 'learning_rate': 6e-4, 'compile': True, 'device': 'cpu', 'init_from': 'scratch',
            'exit_layers': [4, 9, 18, 27, 36], 'eval_only': False, 'out_dir': None}


@pytest.mark.parametrize('arg, key, value', [
    ('--batch_size=16', 'batch_size', 16),
    ('--learning_rate=1', 'learning_rate', 1.0),          # int promoted to float
    ('--learning_rate=3e-4', 'learning_rate', 3e-4),
    ('--compile=false', 'compile', False),
    ('--compile=True', 'compile', True),
    ('--device=cuda', 'device', 'cuda'),                  # bare word is a string
    ('--device="cuda:1"', 'device', 'cuda:1'),
    ('--init_from=ckpt/a=b.pt', 'init_from', 'ckpt/a=b.pt'),  # split on the first '=' only
    ('--exit_layers=[4,36]', 'exit_layers', [4, 36]),
    ('--exit_layers=(9,)', 'exit_layers', [9]),
    ('--out_dir=runs/x', 'out_dir', 'runs/x'),            # None default takes anything
])
def test_overrides(arg, key, value):
    out = apply_config([arg], DEFAULTS)
    assert out[key] == value and type(out[key]) is type(value)
    assert DEFAULTS['batch_size'] == 8  # pure: the input is not modified


@pytest.mark.parametrize('arg, pattern', [
    ('--batch_sise=4', r"unknown config key 'batch_sise' \(nearest known: batch_size\)"),
    ('--batch_size=4.5', r"batch_size expects int like 8, got float 4.5"),
    ('--compile=1', r"compile expects a bool \(true/false\), got 1"),
    ('--learning_rate=fast', r"learning_rate expects float like 0.0006, got str 'fast'"),
    ('--batch_size', r"expected --key=value or --key value"),
    ('--exit_layers=4', r"exit_layers expects list"),
    ('nope.py', r"config file 'nope.py' not found"),
])
def test_errors(arg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        apply_config([arg], DEFAULTS)


def test_space_separated_values():
    out = apply_config(['--device', 'cuda', '--batch_size', '4', '--compile=false'], DEFAULTS)
    assert (out['device'], out['batch_size'], out['compile']) == ('cuda', 4, False)


def test_config_file_then_override(tmp_path):
    f = tmp_path / 'c.py'
    f.write_text('import math\n# a comment\nbatch_size = 32\nlearning_rate = 1\n_private = 3\n')
    out = apply_config([str(f), '--batch_size=2'], DEFAULTS)
    assert out['batch_size'] == 2 and out['learning_rate'] == 1.0 and '_private' not in out and 'math' not in out


def test_config_file_typo_names_file_and_key(tmp_path):
    f = tmp_path / 'c.py'
    f.write_text('batch_size = 4\nlearnin_rate = 1e-3\n')
    with pytest.raises(ConfigError, match=r"c.py: unknown config key 'learnin_rate' \(nearest known: learning_rate\)"):
        apply_config([str(f)], DEFAULTS)


def test_config_file_error_names_line(tmp_path):
    f = tmp_path / 'c.py'
    f.write_text('batch_size = 4\nx = 1 / 0\n')
    with pytest.raises(ConfigError, match=r"c.py:2: ZeroDivisionError"):
        apply_config([str(f)], DEFAULTS)


def run_stage(tmp_path, *args, env=None):
    script = tmp_path / 'stage.py'
    script.write_text("batch_size = 8\nlr = 0.1\nname = 'a'\n"
                      f"exec(open({os.path.join(ROOT, 'configurator.py')!r}).read())\n"
                      "print('RESULT', batch_size, lr, name)\n")
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, **(env or {})})


def test_exec_in_a_stage_script(tmp_path):
    r = run_stage(tmp_path, '--lr=1', '--name=b')
    assert r.returncode == 0 and 'RESULT 8 1.0 b' in r.stdout and 'config: lr = 1.0' in r.stdout


def test_only_rank_zero_prints(tmp_path):
    r = run_stage(tmp_path, '--lr=1', env={'RANK': '3'})
    assert r.returncode == 0 and 'config:' not in r.stdout and 'RESULT 8 1.0 a' in r.stdout


def test_user_error_is_one_line_without_traceback(tmp_path):
    r = run_stage(tmp_path, '--batchsize=2')
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == ["error: argument '--batchsize=2': unknown config key 'batchsize' "
                                             "(nearest known: batch_size)"]


@pytest.mark.parametrize('stage', ['prepare.py', 'pretrain.py', 'finetune.py', 'evaluate.py'])
def test_help_lists_only_settings(stage):
    """--help lists the settings of a stage, never its internals (the configurator's own
    bookkeeping, the directories a run created)."""
    r = subprocess.run([sys.executable, stage, '--help'], capture_output=True, text=True, cwd=ROOT)
    keys = [line.split('=')[0].strip() for line in r.stdout.splitlines() if line.startswith('  --')]
    assert r.returncode == 0 and 'out_dir' in ' '.join(keys)
    assert not {'--created', '--config_keys', '--config', '--master'} & set(keys), keys
