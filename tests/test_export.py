"""
export.py tests (CPU, tiny artefacts in tmp_path):  python -m pytest tests/test_export.py -q

A random multi-exit model with projection heads and pooling='text' is exported at an inner exit
and at the last one; the exports are read back by MoSE.from_pretrained (identical embeddings) and
by transformers' Starcoder2Model, an independent implementation (identical hidden states, made
bidirectional both by config.json's is_causal=false and by the parity test's padding-only mask).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from encode import load_encoder
from export import round_trip
from helpers import randomize, stdlib_sources
from model import MoSE, MoSEConfig, config_to_dict
from test_model import hf_bidirectional
from tokenizer import get_tokenizer, train_bpe
from training import left_pad, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
safetensors = pytest.importorskip('safetensors.torch')


def run_export(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'export.py'), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp('export')
    tok = train_bpe([t for _, t in stdlib_sources(8)], 500, str(d / 'tokenizer'))
    cfg = MoSEConfig(vocab_size=tok.n_vocab, n_layer=6, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=64,
                     max_seq_len=128, exit_layers=(2, 4, 6), attn_dropout=0.0, resid_dropout=0.0, embd_dropout=0.0,
                     pad_id=tok.pad_id, sep_id=tok.sep_id, proj_heads=True, pooling='text', center=True)
    model = randomize(MoSE(cfg)).eval()  # every tensor random, the unused vocabulary rows too
    model.pool_mean.normal_(0, 0.5)      # the running means of a centred fine-tune (a buffer, not a parameter)
    save_checkpoint(str(d / 'ckpt'), 7, {'model': model.state_dict(), 'model_config': config_to_dict(cfg),
                                         'tokenizer': tok.meta()}, keep_last=1)
    out = {}
    for exit, extra in ((4, []), (6, ['--pretrain_heads=true'])):
        r = run_export(f"--init_from={d / 'ckpt'}", f'--exit={exit}', f"--out_dir={d / f'e{exit}'}", '--check=false',
                       *extra)
        assert r.returncode == 0, r.stderr
        out[exit] = (str(d / f'e{exit}'), r.stdout)
    return {'dir': d, 'tok': tok, 'model': model, 'ckpt': str(d / 'ckpt'), 'out': out}


def texts():
    return [text[:n] for (_, text), n in zip(stdlib_sources(4), (700, 90, 400, 20))]


def test_sizes_per_exit_are_printed(trained):
    out = trained['out'][4][1]
    for e in (2, 4, 6):
        assert any(line.split()[:2] == [str(e), str(e)] for line in out.splitlines()), out
    n = trained['model'].num_params(4) - (trained['model'].config.padded_vocab_size - trained['tok'].n_vocab) * 32
    n += 2 * (32 * 32 + 32) * 2 + 2 * 32  # the projection heads of exits 2 and 4, and their running means
    assert f"{n:,} parameters" in out and 'model.safetensors' in out


def test_export_holds_the_blocks_and_heads_up_to_the_exit(trained):
    d4, d6 = trained['out'][4][0], trained['out'][6][0]
    keys = set(safetensors.load_file(os.path.join(d4, 'model.safetensors')))
    assert {k.split('.')[2] for k in keys if k.startswith('model.layers.')} == {'0', '1', '2', '3'}
    assert {k for k in keys if k.startswith('proj.')} == {f'proj.{j}.{l}.{p}' for j in (0, 1) for l in ('fc1', 'fc2')
                                                          for p in ('weight', 'bias')}
    assert 'model.norm.weight' not in keys and not any(k.startswith(('mlm_head', 'icc_head', 'exit_')) for k in keys)
    sd6 = safetensors.load_file(os.path.join(d6, 'model.safetensors'))
    assert 'model.norm.weight' in sd6 and 'mlm_head.decoder.weight' in sd6 and 'proj.2.fc2.bias' in sd6
    assert sd6['model.embed_tokens.weight'].shape == (trained['tok'].n_vocab, 32)  # not the padded table
    with open(os.path.join(d4, 'config.json')) as f:
        cfg = json.load(f)
    assert (cfg['num_hidden_layers'], cfg['matryoshka_layers'], cfg['final_norm'], cfg['pooling']) == (4, [2, 4], False,
                                                                                                       'text')
    assert cfg['is_causal'] is False and cfg['sep_token_id'] == trained['tok'].sep_id and cfg['projection_heads']
    assert cfg['center'] is True and 'pool_mean' in keys
    assert 'proj.{j}.fc1, proj.{j}.fc2' in cfg['mose_layout']


@pytest.mark.parametrize('exit', [4, 6])
def test_from_pretrained_gives_identical_embeddings(trained, exit):
    """export -> MoSE.from_pretrained: the same text embeddings at every exported exit, and the same fingerprint."""
    for e in (2, exit):
        src, exp = load_encoder(trained['ckpt'], e), load_encoder(trained['out'][exit][0], e)
        assert exp.fingerprint == src.fingerprint
        for kind in ('code', 'query'):
            a, b = (enc.encode(texts(), kind=kind, language='python') for enc in (src, exp))
            assert np.abs(a - b).max() <= 1e-6, (e, kind)
    assert exp.model.config.pooling == 'text' and exp.model.config.n_layer == exit


@pytest.mark.parametrize('exit', [4, 6])
def test_transformers_gives_the_same_hidden_states(trained, exit):
    transformers = pytest.importorskip('transformers')
    transformers.logging.set_verbosity_error()
    tok, model = trained['tok'], trained['model']
    hf = transformers.AutoModel.from_pretrained(trained['out'][exit][0]).eval()
    assert type(hf).__name__ == 'Starcoder2Model'
    if not hf.config.final_norm:
        hf.norm = torch.nn.Identity()  # an inner exit is its block's raw output
    idx = left_pad([np.asarray(tok.code_input(t, 'python', 128)) for t in texts()], tok.pad_id)  # (B, T)
    mask = idx != tok.pad_id
    with torch.no_grad():
        ours = model(idx, [2, exit])
        by_config = hf(input_ids=idx, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        by_mask = hf_bidirectional(hf, idx, mask)
        hf.config.is_causal = True
        causal = hf(input_ids=idx, attention_mask=mask.long(), output_hidden_states=True).hidden_states
    for e in (2, exit):
        for ref in (by_config, by_mask):
            err = (ours[e] - ref[e])[mask].abs().max().item()
            assert err < 1e-5, f"exit {e}: max abs error {err}"
        assert (ours[e] - causal[e])[mask].abs().max().item() > 1e-2  # the check can fail


def test_round_trip_check_detects_a_wrong_export(trained, tmp_path):
    tok, model = trained['tok'], trained['model']
    small = model.truncated(4)
    err = round_trip(small, trained['out'][4][0], tok)
    assert err['from_pretrained'] == 0.0 and err['transformers'] is not None and err['transformers'] < 1e-5
    bad = tmp_path / 'bad'
    shutil.copytree(trained['out'][4][0], bad)
    sd = safetensors.load_file(str(bad / 'model.safetensors'))
    sd['proj.1.fc1.bias'] = sd['proj.1.fc1.bias'] + 0.1
    safetensors.save_file(sd, str(bad / 'model.safetensors'))
    assert round_trip(small, str(bad), tok)['from_pretrained'] > 1e-3


def test_from_pretrained_refuses_declared_heads_that_are_absent(trained, tmp_path):
    bad = tmp_path / 'bad'
    shutil.copytree(trained['out'][4][0], bad)
    sd = safetensors.load_file(str(bad / 'model.safetensors'))
    safetensors.save_file({k: v for k, v in sd.items() if not k.startswith('proj.')}, str(bad / 'model.safetensors'))
    with pytest.raises(ValueError, match='declares per-exit heads'):
        MoSE.from_pretrained(str(bad), verbose=False)


def test_tokenizer_files(trained):
    d, tok = trained['out'][4][0], trained['tok']
    mine, theirs = get_tokenizer(d).meta(), tok.meta()
    assert {k: v for k, v in mine.items() if k != 'source'} == {k: v for k, v in theirs.items() if k != 'source'}
    transformers = pytest.importorskip('transformers')
    hf = transformers.AutoTokenizer.from_pretrained(d)
    assert (hf.sep_token_id, hf.cls_token_id, hf.mask_token_id, hf.pad_token_id, hf.padding_side) == \
        (tok.sep_id, tok.cls_id, tok.mask_id, tok.pad_id, 'left')
    for t in texts() + ['text with <sep> and <|endoftext|> in it']:  # special strings in text stay text
        assert hf(t, add_special_tokens=False, split_special_tokens=True)['input_ids'] == tok.encode(t)


def test_errors_are_one_line(trained, tmp_path):
    for args, needle in (([f"--init_from={trained['ckpt']}", '--exit=3'], 'valid exits: [2, 4, 6]'),
                         ([f"--init_from={tmp_path / 'none'}"], 'no checkpoint'),
                         ([f"--init_from={trained['ckpt']}", '--dtype=float16'], 'expected float32 or bfloat16')):
        r = run_export(*args, f"--out_dir={tmp_path / 'out'}")
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: ') and needle in lines[0], r.stderr
    assert not (tmp_path / 'out').exists()
