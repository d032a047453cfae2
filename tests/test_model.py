"""Tests of model.py. Run: python -m pytest tests/test_model.py -q"""
import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

from helpers import left_pad, randomize, tiny_config
from model import MoSE, MoSEConfig, attention, config_from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))






# -----------------------------------------------------------------------------
# parity with transformers' Starcoder2Model (an independent implementation)

def save_hf_checkpoint(tmp_path, prefix='starEncoder2.', n_layer=4, exits=(2, 4)):
    transformers = pytest.importorskip('transformers')
    safetensors = pytest.importorskip('safetensors.torch')
    hf_cfg = transformers.Starcoder2Config(
        vocab_size=100, hidden_size=32, intermediate_size=96, num_hidden_layers=n_layer, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=999999.4420358813, use_bias=True,
        sliding_window=None, residual_dropout=0.0, embedding_dropout=0.0, attention_dropout=0.0,
        norm_epsilon=1e-5, hidden_act='gelu_pytorch_tanh', bos_token_id=None, eos_token_id=None, pad_token_id=0)
    hf = transformers.Starcoder2Model(hf_cfg).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith('norm.weight') else 0.0))
    state = {prefix + k: v.contiguous() for k, v in hf.state_dict().items()}
    state['layer_conditioning.weight'] = torch.zeros(len(exits), 4)  # a head name we do not use
    safetensors.save_file(state, str(tmp_path / 'model.safetensors'))
    cfg = hf_cfg.to_dict()
    cfg.update(matryoshka_layers=list(exits), conditional_size=4, norm_type='layer_norm')
    (tmp_path / 'config.json').write_text(json.dumps(cfg))
    return hf


def hf_bidirectional(hf, idx, mask):
    """Run transformers' model with the causal mask replaced by a padding-only mask."""
    B, T = idx.shape
    add = torch.zeros(B, 1, T, T)
    add.masked_fill_(~mask[:, None, None, :], torch.finfo(torch.float32).min)
    return hf(input_ids=idx, attention_mask=add, output_hidden_states=True).hidden_states


@pytest.mark.parametrize('padded', [False, True])
@pytest.mark.parametrize('prefix', ['starEncoder2.', 'model.'])
def test_parity_with_transformers(tmp_path, capsys, padded, prefix):
    hf = save_hf_checkpoint(tmp_path, prefix=prefix)
    model = MoSE.from_pretrained(str(tmp_path)).eval()
    printed = capsys.readouterr().out
    assert 'layer_conditioning.weight' in printed and 'left at init' in printed
    assert model.config.exit_layers == (2, 4) and model.config.vocab_size == 100
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(1, 100, (n,), generator=g).tolist() for n in ((12, 12) if not padded else (12, 7))]
    idx = left_pad(rows, 12)
    mask = idx != 0
    with torch.no_grad():
        ref = hf_bidirectional(hf, idx, mask)
        ours = model(idx)
    for k in (2, 4):
        err = (ours[k] - ref[k])[mask].abs().max().item()
        assert err < 1e-5, f"exit {k}: max abs error {err}"


@pytest.mark.parametrize('padded', [False, True])
def test_training_matches_transformers(tmp_path, padded):
    """Six AdamW steps of the self-distillation loss from the same weights: model.py (fused MLM
    loss, its own attention) against transformers' Starcoder2Model feeding the same heads through
    plain F.cross_entropy. Losses and parameters must agree, so backward is right, not only forward."""
    from training import mask_tokens
    hf = save_hf_checkpoint(tmp_path)
    model = MoSE.from_pretrained(str(tmp_path), verbose=False)
    randomize(model.exit_embedding, 1), randomize(model.mlm_head, 2), randomize(model.icc_head, 3)
    heads = {n: copy.deepcopy(getattr(model, n)) for n in ('exit_embedding', 'mlm_head', 'icc_head')}
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(1, 96, (n,), generator=g).tolist() + [97] for n in ((15, 15, 15) if not padded else (15, 6, 11))]
    idx = left_pad(rows, 16)                                     # (3, 16), <cls> = 97 last
    mask = idx != 0
    inputs, positions, targets = mask_tokens(idx, {0, 96, 97, 98}, 100, 98, g, rate=0.3)
    labels = torch.tensor([0, 1, 1])

    def hf_loss():
        hs = hf_bidirectional(hf, inputs, mask)
        total = 0.0
        for e in (2, 4):
            cond = heads['exit_embedding'].weight[e // 2 - 1]
            cat = lambda h: torch.cat([h, cond.expand(*h.shape[:-1], -1)], -1)
            mlm = heads['mlm_head'](cat(hs[e].reshape(-1, 32)[positions]))
            icc = heads['icc_head'](cat(hs[e][:, -1]))
            total = total + e / 4 * (F.cross_entropy(mlm, targets) + F.cross_entropy(icc, labels))
        return total

    hf_params = list(hf.parameters()) + [p for m in heads.values() for p in m.parameters()]
    runs = [(lambda: model.pretrain_loss(inputs, mask, positions, targets, labels)[0], list(model.parameters())),
            (hf_loss, hf_params)]
    losses = [[], []]
    for (loss_fn, params), out in zip(runs, losses):
        opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)
        for _ in range(6):
            loss = loss_fn()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            out.append(loss.item())
    assert losses[0][-1] < losses[0][0] - 0.1  # it trains, so the comparison is not between two constants
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)
    ours = {k: v for k, v in model.state_dict().items() if k.split('.')[0] in ('embed_tokens', 'layers', 'norm')}
    theirs = hf.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:  # model.py pads the vocabulary rows to a multiple of 64
        if k.endswith('k_proj.bias'):  # softmax ignores q.b_k, so its true gradient is 0 and Adam
            continue                   # turns the rounding noise left in it into lr-sized steps
        assert torch.allclose(ours[k][:len(theirs[k])], theirs[k], atol=1e-4), k


# -----------------------------------------------------------------------------
# behaviour

@pytest.fixture
def model():
    torch.manual_seed(0)
    return randomize(MoSE(tiny_config())).eval()


def test_bidirectional(model):
    idx = torch.randint(1, 100, (1, 10))
    other = idx.clone()
    other[0, -2] = (idx[0, -2] % 99) + 1  # change the last real token before <cls>
    h1, h2 = model(idx)[2], model(other)[2]
    assert not torch.allclose(h1[0, 0], h2[0, 0], atol=1e-6)  # the first position sees the future


@pytest.mark.parametrize('n_pad', [1, 5, 20])
def test_padding_invariance(model, n_pad):
    row = torch.randint(1, 100, (9,)).tolist()
    a = model(left_pad([row], 9))
    b = model(left_pad([row, [5] * (9 + n_pad)], 9 + n_pad))  # a longer neighbour forces padding
    for k in model.config.exit_layers:
        assert torch.allclose(a[k][0], b[k][0, n_pad:], atol=1e-5), k


@pytest.mark.parametrize('exit', [2, 4, 6])
def test_early_exit_equals_full_forward(model, exit):
    idx = torch.randint(1, 100, (2, 11))
    calls = []
    hooks = [b.register_forward_hook(lambda *a: calls.append(1)) for b in model.layers]
    part = model(idx, [exit])
    assert len(calls) == exit  # no block past the requested exit runs
    for h in hooks:
        h.remove()
    assert torch.equal(part[exit], model(idx)[exit])


def test_last_exit_is_normed_and_others_raw(model):
    idx = torch.randint(1, 100, (2, 8))
    out, x = model(idx), model.embed_tokens(idx)
    for i, block in enumerate(model.layers, start=1):
        x = block(x, model.rope, None)
        if i in (2, 4):
            assert torch.allclose(out[i], x)
    assert torch.allclose(out[6], model.norm(x))


def test_gqa_equals_mha_with_repeated_kv():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, 10, 16), torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :3] = False
    out = attention(q, k, v, mask, 0.0)
    kr, vr = k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1)  # kv head j serves q heads 4j..4j+3
    scores = q @ kr.transpose(-1, -2) / 4.0
    scores = scores.masked_fill(~mask[:, None, None, :], float('-inf'))
    ref = scores.softmax(-1) @ vr
    assert torch.allclose(out, ref, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position(model):
    rope = model.rope
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    qs, ks = rope(q.expand(1, 1, 40, 8), 40), rope(k.expand(1, 1, 40, 8), 40)  # same vectors at every position
    s = (qs @ ks.transpose(-1, -2))[0, 0]  # (40, 40)
    for offset in (-7, 0, 3, 11):
        diag = torch.diagonal(s, offset=offset)
        assert torch.allclose(diag, diag[0].expand_as(diag), atol=1e-4)
    assert not torch.allclose(s[0, 1], s[0, 5])  # but it does depend on the distance


def test_mlm_head_touches_only_masked_positions(model):
    idx = torch.randint(1, 100, (2, 10))
    h = model(idx)[4].detach().requires_grad_(True)
    positions = torch.tensor([3, 12, 17])
    logits = model.mlm_logits(h, 4, positions)
    assert logits.shape == (3, model.config.padded_vocab_size)
    logits.sum().backward()
    touched = h.grad.reshape(-1, h.size(-1)).abs().sum(-1).nonzero().squeeze(1)
    assert touched.tolist() == positions.tolist()


@pytest.mark.parametrize('chunk', [1, 7, 256])
def test_fused_mlm_loss_equals_cross_entropy_on_full_logits(model, chunk):
    torch.manual_seed(0)
    h = torch.randn(2, 10, 32, requires_grad=True)
    positions, targets = torch.tensor([0, 3, 4, 11, 19]), torch.randint(0, 100, (5,))
    loss, correct = model.mlm_loss(h, 4, positions, targets, chunk=chunk)
    logits = model.mlm_logits(h, 4, positions)
    ref = F.cross_entropy(logits, targets)
    assert torch.allclose(loss, ref, atol=1e-6) and correct == (logits.argmax(-1) == targets).sum()
    params = [h, model.mlm_head.decoder.weight, model.mlm_head.decoder.bias, model.mlm_head.dense.weight,
              model.exit_embedding.weight]
    g_fused = torch.autograd.grad(3 * loss, params)
    g_ref = torch.autograd.grad(3 * ref, params)
    for a, b in zip(g_fused, g_ref):
        assert torch.allclose(a, b, atol=1e-6)
    with torch.no_grad():  # no gradients computed or needed for evaluation
        assert torch.allclose(model.mlm_loss(h, 4, positions, targets, chunk=chunk)[0], ref)


@pytest.mark.parametrize('chunk', [0, 3])
def test_fused_mlm_loss_under_bf16_autocast_matches_autocast_cross_entropy(model, chunk):
    torch.manual_seed(0)
    h = torch.randn(2, 10, 32, requires_grad=True)
    positions, targets = torch.tensor([0, 3, 4, 11, 19]), torch.randint(0, 100, (5,))
    params = [h, model.mlm_head.decoder.weight, model.mlm_head.decoder.bias]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss, _ = model.mlm_loss(h, 4, positions, targets, chunk=chunk)
        ref = F.cross_entropy(model.mlm_logits(h, 4, positions).float(), targets)
    g_fused, g_ref = torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)
    assert abs(loss.item() - ref.item()) < 1e-2
    for a, b in zip(g_fused, g_ref):
        assert a.dtype == b.dtype == torch.float32 and torch.allclose(a, b, atol=2e-3, rtol=2e-2)


def test_heads_are_conditioned_on_the_exit(model):
    h = torch.randn(2, 5, 32)
    assert not torch.allclose(model.icc_logits(h, 2), model.icc_logits(h, 4))
    assert model.icc_logits(h, 2).shape == (2, 2)


def test_pretrain_loss_weights(model):
    torch.manual_seed(0)
    idx = torch.randint(1, 100, (2, 10))
    pos, tgt, lab = torch.tensor([1, 5, 13]), torch.randint(1, 100, (3,)), torch.tensor([0, 1])
    total, stats = model.pretrain_loss(idx, None, pos, tgt, lab)
    ref = 0.0
    for e, h in model(idx).items():
        ref += e / 6 * (F.cross_entropy(model.mlm_logits(h, e, pos), tgt) + F.cross_entropy(model.icc_logits(h, e), lab))
    assert torch.allclose(total, ref, atol=1e-5) and set(stats) == {2, 4, 6}



def icc_toy_batch(g, n, groups=6, per_group=8, sep=1, cls=2, pad=0):
    """<sep> a <sep> b <cls>, left-padded, snippets of 4-8 tokens. Each "repository" owns its own
    8 token ids; label 1 when both snippets come from one repository. No single token or bag of
    tokens tells the label: the model has to compare the two snippets, as ICC asks (paper 2.1)."""
    rows, labels = [], []
    for _ in range(n):
        a, y = torch.randint(groups, (1,), generator=g).item(), torch.randint(2, (1,), generator=g).item()
        b = a if y else (a + 1 + torch.randint(groups - 1, (1,), generator=g).item()) % groups
        row = []
        for r in (a, b):
            length = torch.randint(4, 9, (1,), generator=g).item()
            row += [sep] + (3 + r * per_group + torch.randint(per_group, (length,), generator=g)).tolist()
        rows.append(row + [cls])
        labels.append(y)
    return left_pad(rows, max(map(len, rows)), pad), torch.tensor(labels)


def test_icc_learns_to_compare_snippets_on_unseen_sequences():
    """The ICC path generalises: trained with the exit-weighted ICC loss on fresh toy batches,
    the <cls> classifier labels 512 unseen sequences (chance 50%) at >= 85% at the last exit."""
    torch.manual_seed(0)
    m = MoSE(tiny_config(vocab_size=3 + 6 * 8, n_layer=2, exit_layers=(1, 2), intermediate_size=64, init_std=0.02))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    x_val, y_val = icc_toy_batch(torch.Generator().manual_seed(1), 512)

    def accuracy():
        with torch.no_grad():
            return {e: (m.icc_logits(h, e).argmax(-1) == y_val).float().mean().item() for e, h in m(x_val).items()}

    assert max(accuracy().values()) < 0.65
    for _ in range(400):
        x, y = icc_toy_batch(g, 64)
        loss = sum(e / 2 * F.cross_entropy(m.icc_logits(h, e), y) for e, h in m(x).items())
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = accuracy()
    assert acc[2] >= 0.85 and acc[1] > 0.6, acc


def retrieval_toy_batch(g, n, half=100, keys=4, noise=8):
    """Toy text-code pairs in two vocabularies, as natural language and identifiers are: the query's
    `keys` words are ids in [1, half), the code holds their counterparts id + half - 1 among its own
    noise ids in [half, 2 half - 1). Only a learned mapping between the two finds a query's code."""
    k = torch.randint(1, half, (n, keys), generator=g)
    q = torch.cat([k, torch.randint(1, half, (n, noise), generator=g)], 1)
    c = torch.cat([k + half - 1, torch.randint(half, 2 * half - 1, (n, 2 * noise), generator=g)], 1)
    shuffle = lambda x: x.gather(1, torch.rand(x.shape, generator=g).argsort(1))
    return shuffle(q), shuffle(c)


def toy_retrieval(embed_std, embed_lr_mult, steps=300):
    """(MRR per exit on 256 unseen toy pairs before and after `steps` CLIP steps, mean pairwise cosine of
    the queries' last-exit embeddings after) for a 4-layer width-64 model, mean pooling, lr 1e-3."""
    from finetune import clip_loss
    torch.manual_seed(0)
    m = MoSE(tiny_config(vocab_size=200, n_layer=4, exit_layers=(1, 2, 4), n_embd=64, intermediate_size=128,
                         embed_std=embed_std, pooling='mean', max_seq_len=64))
    opt = m.configure_optimizers(0.0, 1e-3, (0.9, 0.95), 1e-6, 'cpu', embed_lr_mult)
    g = torch.Generator().manual_seed(0)
    qv, cv = retrieval_toy_batch(torch.Generator().manual_seed(1), 256)

    def mrr():
        with torch.no_grad():
            out = {}
            for e in (1, 2, 4):
                s = m.encode(qv, e) @ m.encode(cv, e).T                          # (256, 256)
                out[e] = (1.0 / (s >= s.diag()[:, None]).sum(1).float()).mean().item()
            return out
    before = mrr()
    for _ in range(steps):
        q, c = retrieval_toy_batch(g, 32)
        zq, zc = m.encode(q, [1, 2, 4]), m.encode(c, [1, 2, 4])
        loss = sum(e / 4 * clip_loss(zq[e], zc[e], 20.0)[0] for e in (1, 2, 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        zq = m.encode(qv, 4)
    cos = ((zq @ zq.T).sum() - len(zq)) / (len(zq) ** 2 - len(zq))
    return before, mrr(), cos.item()


def test_small_model_learns_retrieval_without_collapsing():
    """The tiny recipe (embed_std 1, the embedding at 30x the lr, mean pooling, no heads): 300 CLIP
    steps at lr 1e-3 lift every exit's MRR on unseen toy pairs from chance (~2.4%) to >= 0.1 (an
    NBoW reaches ~0.19 here), and different queries stay apart (cosine < 0.6). With the released
    init (std 0.018) or with the embedding at the blocks' lr, every input becomes nearly one vector
    (cosine 0.97-0.99, MRR 0.03-0.04): README, diagnosis."""
    before, after, cos = toy_retrieval(1.0, 30.0)
    assert max(before.values()) < 0.05, before
    assert min(after.values()) >= 0.1 and cos < 0.6, (after, cos)


def test_encode_normalised_and_all_exits_in_one_pass():
    torch.manual_seed(0)
    m = randomize(MoSE(tiny_config(proj_heads=True))).eval()
    idx = torch.randint(1, 100, (3, 9))
    both = m.encode(idx, [2, 6])
    for e in (2, 6):
        one = m.encode(idx, e)
        assert torch.allclose(one, both[e], atol=1e-6)
        assert torch.allclose(one.norm(dim=-1), torch.ones(3))


# -----------------------------------------------------------------------------
# sizes, FLOPs, truncation, checkpoints

def test_mose_1b_parameter_counts_match_release():
    scope = {}
    exec(open(os.path.join(ROOT, 'config/mose_1b.py')).read(), scope)
    with torch.device('meta'):
        m = MoSE(MoSEConfig(**{k: v for k, v in scope.items() if k in vars(MoSEConfig())}))
    assert m.config == MoSEConfig()  # the file sets the released values, which are also the defaults
    released = {4: 160e6, 9: 300e6, 18: 550e6, 27: 800e6, 36: 1.0e9}
    for e, n in released.items():
        assert abs(m.num_params(e) - n) / n < 0.06, (e, m.num_params(e))
    assert m.config.padded_vocab_size == 49216  # 49156 padded to a multiple of 64


def test_flops_grow_with_exit_and_length(model):
    f = [model.estimate_flops(128, e) for e in model.config.exit_layers]
    assert f == sorted(f) and len(set(f)) == len(f)
    assert model.estimate_flops(256, 6) > 2 * model.estimate_flops(128, 6)  # attention is quadratic
    assert model.estimate_flops(128, 6, mlm_tokens=10) > f[-1]


def test_truncation_keeps_outputs_and_drops_weights(model, tmp_path):
    idx = torch.randint(1, 100, (2, 9))
    small = model.truncated(4)
    assert len(small.layers) == 4 and small.config.exit_layers == (2, 4) and small.norm is None
    full = model(idx)
    for e in (2, 4):
        assert torch.equal(small(idx)[e], full[e])
    h = full[4]
    assert torch.equal(small.icc_logits(h, 4), model.icc_logits(h, 4))
    model.save(tmp_path / 'full.pt')
    small.save(tmp_path / 'small.pt')
    assert os.path.getsize(tmp_path / 'small.pt') < os.path.getsize(tmp_path / 'full.pt')
    again = MoSE.load(tmp_path / 'small.pt').eval()
    assert torch.equal(again(idx)[4], full[4])


def test_truncation_to_a_single_exit_keeps_its_heads():
    torch.manual_seed(0)
    m = randomize(MoSE(tiny_config(proj_heads=True))).eval()
    idx = torch.randint(1, 100, (2, 9))
    small = m.truncated(4, keep_exits=[4])
    assert small.config.exit_layers == (4,) and len(small.proj) == 1
    assert torch.equal(small.encode(idx, 4), m.encode(idx, 4))
    h = m(idx)[4]
    assert torch.equal(small.icc_logits(h, 4), m.icc_logits(h, 4))  # exit-4 embedding row kept


def test_vocab_rows_are_padded_when_loading(model):
    assert model.config.padded_vocab_size == 128
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd['embed_tokens.weight'] = sd['embed_tokens.weight'][:100]
    sd['mlm_head.decoder.weight'] = sd['mlm_head.decoder.weight'][:100]
    sd['mlm_head.decoder.bias'] = sd['mlm_head.decoder.bias'][:100]
    from model import load_state
    other = MoSE(tiny_config())
    load_state(other, sd)
    assert torch.equal(other.embed_tokens.weight[:100], model.embed_tokens.weight[:100])
    assert other.embed_tokens.weight[100:].abs().sum() == 0


def test_configure_optimizers_decays_only_matrices(model):
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 1e-6, 'cpu')
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert all(p.dim() >= 2 for p in decay['params']) and all(p.dim() < 2 for p in no_decay['params'])
    assert len(decay['params']) + len(no_decay['params']) == len(list(model.parameters()))


def test_configure_optimizers_embedding_lr(model):
    """embed_lr_mult puts the token embedding alone in a third group at that multiple of the lr."""
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 1e-6, 'cpu', embed_lr_mult=30.0)
    decay, no_decay, emb = opt.param_groups
    assert emb['params'] == [model.embed_tokens.weight] and emb['weight_decay'] == 0.0
    assert emb['lr'] == pytest.approx(3e-2) and decay['lr'] == pytest.approx(1e-3) and emb['lr_mult'] == 30.0
    assert all(p is not model.embed_tokens.weight for p in decay['params'])
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))


# -----------------------------------------------------------------------------
# bad input

def test_forward_reads_no_tensor_value_back(model):
    """On an accelerator, reading a value (idx.min(), mask.all(), .item()) stalls until the device
    catches up. A meta tensor has no values at all: the forward must run on it."""
    m = copy.deepcopy(model).to('meta')
    idx = torch.tensor([[0, 0, 5, 7], [1, 2, 3, 4]]).to('meta')
    out = m(idx, [2, 6])
    assert out[6].shape == (2, 4, 32) and m.encode(idx, 4).shape == (2, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_forward_on_cuda_never_synchronises(model):
    m, idx = copy.deepcopy(model).cuda(), torch.tensor([[0, 0, 5, 7], [1, 2, 3, 4]], device='cuda')
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')  # any host-device synchronisation raises
    try:
        out = m(idx, [2, 6])
        z = m.encode(idx, 4)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert out[6].shape == (2, 4, 32) and z.shape == (2, 32)


def test_bad_token_id_in_a_batch():
    from training import left_pad as pad_batch
    with pytest.raises(ValueError, match=r"token id 100 is outside the vocabulary \[0, 100\)"):
        pad_batch([[1, 2], [3, 100]], pad_id=0, vocab_size=100)
    assert pad_batch([[1, 2], [3, 99]], pad_id=0, vocab_size=100).shape == (2, 8)


def test_bad_token_id(model):
    with pytest.raises(ValueError, match=r"token id 100 is outside the vocabulary \[0, 100\)"):
        model(torch.tensor([[1, 2, 100]]))


@pytest.mark.parametrize('exit', [3, 7, 0])
def test_unconfigured_exit_lists_valid_ones(model, exit):
    with pytest.raises(ValueError, match=r"valid exits: \[2, 4, 6\]"):
        model(torch.tensor([[1, 2, 3]]), [exit])


def test_sequence_too_long(model):
    with pytest.raises(ValueError, match="exceeds max_seq_len=64"):
        model(torch.ones(1, 65, dtype=torch.long))


def test_checkpoint_shape_mismatch(model, tmp_path):
    model.save(tmp_path / 'a.pt')
    ckpt = torch.load(tmp_path / 'a.pt', weights_only=True)
    ckpt['model']['layers.0.mlp.c_fc.weight'] = torch.zeros(7, 32)
    torch.save(ckpt, tmp_path / 'b.pt')
    with pytest.raises(ValueError, match=r"layers.0.mlp.c_fc.weight.*\(7, 32\).*\(96, 32\)"):
        MoSE.load(tmp_path / 'b.pt')


def test_checkpoint_never_executes_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ('touch ' + str(tmp_path / 'pwned'),))
    torch.save({'model': Evil(), 'config': {}}, tmp_path / 'evil.pt')
    with pytest.raises(ValueError, match='not a readable checkpoint'):
        MoSE.load(tmp_path / 'evil.pt')
    assert not (tmp_path / 'pwned').exists()


@pytest.mark.parametrize('kw, msg', [
    (dict(exit_layers=(2, 4)), 'must be the last layer'),
    (dict(n_head=5), 'not divisible'),
    (dict(exit_layers=(4, 2, 6)), 'strictly increasing'),
])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        tiny_config(**kw)


def test_unknown_config_key_in_checkpoint():
    with pytest.raises(ValueError, match=r"unknown model config keys \['n_layers'\]"):
        config_from_dict({'n_layers': 3})


def test_cpu_bf16_attention_runs_in_float32():
    """On a CPU, bf16 q, k, v (as the projections give them under autocast) are attended in float32
    (model.attention: the bf16 kernel's backward is ~4x slower there): the result is the float32
    attention rounded to bf16, not what SDPA in bf16 gives, and gradients reach q, k and v."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(8, 4, 64, 32, generator=g).bfloat16().requires_grad_()
    k, v = (torch.randn(8, 1, 64, 32, generator=g).bfloat16().requires_grad_() for _ in range(2))
    mask = torch.ones(8, 64, dtype=torch.bool)
    mask[::2, :20] = False  # left padding
    m = mask[:, None, None, :]
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=m, enable_gqa=True).bfloat16()
    in_bf16 = F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = attention(q, k, v, mask, 0.0)
    assert y.dtype == torch.bfloat16 and torch.equal(y, ref) and not torch.equal(y, in_bf16)
    y.float().square().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 and t.grad.abs().sum() > 0 for t in (q, k, v))
