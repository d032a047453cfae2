"""The retrieval embedding's pooling: 'text' averages the token states after the last <sep>."""
import pytest
import torch
import torch.nn.functional as F

from model import MoSE, MoSEConfig
from tokenizer import get_tokenizer
from training import left_pad


def tiny(pooling, tok, **kw):
    torch.manual_seed(0)
    return MoSE(MoSEConfig(**kw, vocab_size=tok.n_vocab, n_layer=2, n_embd=32, n_head=2, n_kv_head=1,
                           intermediate_size=64, exit_layers=(1, 2), max_seq_len=64, attn_dropout=0.0,
                           resid_dropout=0.0, embd_dropout=0.0, pad_id=tok.pad_id, sep_id=tok.sep_id,
                           pooling=pooling, embed_std=1.0)).eval()


def test_text_pooling_is_the_mean_after_the_instruction():
    tok = get_tokenizer('cl100k_base')
    seqs = [tok.query_input('open a socket and retry', 32), tok.code_input('def f(x):\n    return x + 1', 'python', 32),
            tok.snippet('no instruction here', 32)]
    idx = left_pad([torch.tensor(s).numpy() for s in seqs], tok.pad_id)    # (3, T), left-padded
    model = tiny('text', tok)
    with torch.no_grad():
        z = model.encode(idx, [1, 2])
        hs = model(idx, [1, 2])
    for e in (1, 2):
        for b, s in enumerate(seqs):
            # the positions of the text in the unpadded sequence: after its last <sep>
            start = max(i for i, t in enumerate(s) if t == tok.sep_id) + 1
            offset = idx.shape[1] - len(s)
            expected = F.normalize(hs[e][b, offset + start:].mean(0), dim=-1)
            assert torch.allclose(z[e][b], expected, atol=1e-5)
    # with an instruction, 'mean' (which averages it in) gives another vector
    with torch.no_grad():
        zm = tiny('mean', tok).encode(idx, 2)
    assert not torch.allclose(z[2][0], zm[0], atol=1e-3)


def test_text_pooling_ignores_left_padding():
    tok = get_tokenizer('cl100k_base')
    s = tok.query_input('parse a date string', 24)
    model = tiny('text', tok)
    with torch.no_grad():
        alone = model.encode(torch.tensor([s]), 2)
        padded = model.encode(left_pad([torch.tensor(s).numpy(), torch.tensor(s + s[1:]).numpy()[:30]], tok.pad_id), 2)
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_unknown_pooling_is_a_one_line_error():
    with pytest.raises(ValueError, match="pooling='max' must be 'cls', 'mean' or 'text'"):
        MoSEConfig(pooling='max')


def test_centring_subtracts_the_batch_mean_in_training_and_the_running_mean_in_eval():
    tok = get_tokenizer('cl100k_base')
    seqs = [tok.query_input(t, 24) for t in ('open a socket', 'parse a date string', 'sort a list in place')]
    idx = left_pad([torch.tensor(s).numpy() for s in seqs], tok.pad_id)     # (3, T)
    plain, model = tiny('mean', tok), tiny('mean', tok, center=True).train()
    with torch.no_grad():
        w = (idx != tok.pad_id).unsqueeze(-1).float()
        pooled = {e: (h * w).sum(1) / w.sum(1) for e, h in plain(idx, [1, 2]).items()}  # (3, C) each
    z = model.encode(idx, [1, 2])
    for j, e in enumerate((1, 2)):
        assert torch.allclose(z[e], F.normalize(pooled[e] - pooled[e].mean(0), dim=-1), atol=1e-5)
        assert torch.allclose(model.pool_mean[j], 0.1 * pooled[e].mean(0), atol=1e-5)  # one step from 0
    # the gradient goes through the batch mean: a shift common to the batch (a bias of block 1, before
    # any norm) changes nothing. Without centring this gradient is of order 1.
    z[1].sum().backward()
    g = model.layers[0].mlp.c_proj.bias.grad
    assert g is not None and g.abs().max() < 1e-5
    model.eval()
    with torch.no_grad():
        ze = model.encode(idx, 2)
    assert torch.allclose(ze, F.normalize(pooled[2] - model.pool_mean[1], dim=-1), atol=1e-5)
    # a deployed truncation keeps its exits' running means
    small = model.truncated(1)
    assert torch.equal(small.pool_mean, model.pool_mean[:1])


def test_exit_norm_puts_every_exit_through_the_final_layernorm():
    tok = get_tokenizer('cl100k_base')
    idx = left_pad([torch.tensor(tok.query_input(t, 24)).numpy() for t in ('open a socket', 'sort a list')], tok.pad_id)
    raw, normed = tiny('text', tok), tiny('text', tok, exit_norm=True)
    with torch.no_grad():
        a, b = raw(idx, [1, 2]), normed(idx, [1, 2])
        assert torch.allclose(b[1], raw.norm(a[1]), atol=1e-6) and not torch.allclose(b[1], a[1], atol=1e-2)
        assert torch.allclose(b[2], a[2], atol=1e-6)  # the last exit was normalised already
        small = normed.truncated(1)                    # a deployed inner exit keeps the norm
        assert small.norm is not None and torch.allclose(small(idx, [1])[1], b[1], atol=1e-6)
