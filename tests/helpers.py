"""Small real artefacts built inside the tests (no network)."""
import json
import os
import sysconfig

import numpy as np
import torch

from data import write_shard
from model import MoSEConfig
from tokenizer import get_tokenizer


def stdlib_sources(n, min_bytes=2000):
    """n real Python source files from the standard library, in a fixed order."""
    root = sysconfig.get_paths()['stdlib']
    names = sorted(f for f in os.listdir(root) if f.endswith('.py'))
    out = []
    for f in names:
        with open(os.path.join(root, f), encoding='utf-8', errors='replace') as fh:
            text = fh.read()
        if len(text) >= min_bytes:
            out.append((f, text))
        if len(out) == n:
            break
    return out


def make_icc_dataset(out, n_train=48, n_val=16, max_len=64, tok=None, texts=None):
    """An ICC dataset in prepare.py's format from real stdlib code (or `texts`, with `tok`; default
    cl100k): each sequence is <sep> a <sep> b <cls> of two file chunks, label 1 when both come from
    one file."""
    tok = tok or get_tokenizer('cl100k_base')
    files = [tok.encode(text) for text in (texts or [text for _, text in stdlib_sources(24)])]
    rng = np.random.default_rng(0)
    half = (max_len - 3) // 2

    def seqs(n, pool):
        rows, labels = [], []
        for i in range(n):
            a = pool[rng.integers(len(pool))]
            same = i % 2 == 0
            b = a if same else pool[rng.integers(len(pool))]
            sa, sb = rng.integers(0, len(a) - half), rng.integers(0, len(b) - half)
            rows.append([tok.sep_id] + a[sa:sa + half] + [tok.sep_id] + b[sb:sb + half] + [tok.cls_id])
            labels.append(int(same))
        return rows, labels

    os.makedirs(out, exist_ok=True)
    splits, max_id = {}, 0
    for split, n, pool in (('train', n_train, files[:18]), ('val', n_val, files[18:])):
        rows, labels = seqs(n, pool)
        write_shard(os.path.join(out, f'{split}_0000.bin'), rows, labels)
        splits[split] = {'shards': [f'{split}_0000.bin'], 'sequences': n, 'tokens': sum(map(len, rows)),
                         'positives': sum(labels)}
        max_id = max(max_id, max(max(r) for r in rows))
    manifest = {'format': 'mose-icc', 'version': 1, 'tokenizer': tok.meta(), 'max_len': max_len, 'seed': 0,
                'splits': splits, 'max_token_id': max_id}
    with open(os.path.join(out, 'manifest.json'), 'w') as f:
        json.dump(manifest, f)
    return out


def losses(out):
    """{step: loss} of a pre-training run's log.jsonl."""
    with open(os.path.join(out, 'log.jsonl')) as f:
        return {e['step']: e['loss'] for e in map(json.loads, f) if 'loss' in e}


def randomize(module, seed=0):
    """Random values everywhere (biases and LayerNorms too) so that parity tests mean something: at
    the init's std 0.018 most of a block's output is its residual input, and errors hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if 'norm' in name and name.endswith('weight') else 0.0))
    return module


def left_pad(rows, T, pad=0):
    """Token-id lists -> (B, T) long tensor, left-padded with `pad` (rows given, T chosen by the test)."""
    out = torch.full((len(rows), T), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, T - len(r):] = torch.tensor(r)
    return out


def tiny_config(**kw):
    """A 6-layer, 32-wide model config with exits 2, 4, 6 and no dropout; `kw` overrides."""
    base = dict(vocab_size=100, n_layer=6, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=96,
                max_seq_len=64, exit_layers=(2, 4, 6), attn_dropout=0.0, resid_dropout=0.0, embd_dropout=0.0,
                pad_id=0)
    base.update(kw)
    return MoSEConfig(**base)
