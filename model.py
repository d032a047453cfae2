"""
MoSE (ModularStarEncoder): a bidirectional, multi-exit StarCoder-2 encoder.

Paper: "MoSE: Hierarchical Self-Distillation Enhances Early Layer Embeddings"
(sections 2.2 and 3). The backbone is StarCoder-2 with the causal mask removed and
full attention (no sliding window). Training losses are applied at several exit layers
(4, 9, 18, 27, 36 for the 1B model) through heads shared by all exits and conditioned
on a learned embedding of the exit. Parameter and module names of the backbone follow
transformers' `Starcoder2Model`, so the released checkpoints load by stripping a prefix.

Inputs are left-padded: the last position of every row is `<cls>`, whose hidden state
is the pooled representation (paper Fig. 2; FlashAttention-2 friendly).
"""
import json
import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from data import atomic_open

try:  # flash-attn is used when present and the tensors are on CUDA; never required
    from flash_attn import flash_attn_varlen_func
except ImportError:
    flash_attn_varlen_func = None


EXIT_STATS = ('mlm_loss', 'icc_loss', 'mlm_acc', 'icc_acc')  # the entries of pretrain_loss's per-exit statistics
EXIT_WEIGHTINGS = ('depth', 'uniform')  # MoSE.exit_weights: exit / n_layer (paper 2.2), or 1 at every exit


@dataclass
class MoSEConfig:
    vocab_size: int = 49156          # tokenizer size incl. added tokens; the tables are padded to a multiple of 64
    n_layer: int = 36                # transformer blocks (the deepest exit must be the last block)
    n_embd: int = 1024               # width
    n_head: int = 16                 # query heads
    n_kv_head: int = 4               # key/value heads (grouped-query attention, Ainslie et al. 2023)
    intermediate_size: int = 12288   # MLP hidden width
    rope_theta: float = 999999.4420358813  # RoPE base period, ~1e6 (paper 3)
    max_seq_len: int = 2048          # longest input, <cls> included
    norm_eps: float = 1e-5           # LayerNorm epsilon
    bias: bool = True                # biases on q/k/v/o and both MLP linears (StarCoder-2 use_bias)
    attn_dropout: float = 0.1        # dropout on attention probabilities
    resid_dropout: float = 0.1       # dropout on each residual branch output
    embd_dropout: float = 0.1        # dropout on the token embeddings
    init_std: float = 0.018042       # std of the normal init (released initializer_range)
    embed_std: float = 0.0           # std of the token-embedding init; 0 = init_std. A small model needs ~1
                                     # (README: at width 128, std 0.018 lets the first Adam steps collapse it)
    exit_layers: tuple = (4, 9, 18, 27, 36)  # layers where losses / embeddings are taken (paper 2.2)
    conditional_size: int = 4        # width of the learned exit embedding concatenated before the heads
    pad_id: int = 0                  # padding token id (StarCoder-2's <|endoftext|>); pad keys are masked out
    sep_id: int = 49152              # <sep> id (StarCoder-2's); pooling='text' averages what follows the last one
    final_norm: bool = True          # deepest exit passes through the final LayerNorm (False once truncated below it)
    exit_norm: bool = False          # every exit passes through that LayerNorm (shared), not only the deepest: the
                                     # paper's inner exits are raw block outputs; a small model fine-tuned briefly
                                     # retrieves better from normalised tokens at exits 2-6 (RESULTS.md)
    proj_heads: bool = False         # one retrieval projection head per exit (paper 4.1)
    n_classes: int = 0               # >0: one classifier per exit on <cls> (clone detection, paper 4.2)
    pooling: str = 'cls'             # retrieval embedding: 'cls' = the final <cls> state (paper Fig. 2, the released
                                     # models); 'mean' = the mean over real tokens (Sentence-BERT's default);
                                     # 'text' = the mean over the text after the instruction (the tokens after
                                     # the last <sep>): the instruction, the same in every input, is context
                                     # the text attends to, not part of the average
    center: bool = False             # fine-tuning: each exit's pooled states minus their batch mean (a running
                                     # mean in eval), BatchNorm's centring without its scale. Briefly pre-trained
                                     # states share one dominant direction that cosines cannot see past; the
                                     # gradient through the batch mean removes it (RESULTS.md). Under DDP the
                                     # mean is over every rank's batch, so a world of n equals one process

    def __post_init__(self):
        self.exit_layers = tuple(int(e) for e in self.exit_layers)
        problems = []
        if self.n_embd % self.n_head:
            problems.append(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            problems.append(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        if (self.n_embd // max(self.n_head, 1)) % 2:
            problems.append("head size must be even for rotary embeddings")
        if not self.exit_layers or list(self.exit_layers) != sorted(set(self.exit_layers)) or self.exit_layers[0] < 1:
            problems.append(f"exit_layers={list(self.exit_layers)} must be strictly increasing layers >= 1")
        elif self.exit_layers[-1] != self.n_layer:
            problems.append(f"the deepest exit ({self.exit_layers[-1]}) must be the last layer (n_layer={self.n_layer})")
        if self.pooling not in ('cls', 'mean', 'text'):
            problems.append(f"pooling={self.pooling!r} must be 'cls', 'mean' or 'text'")
        if problems:
            raise ValueError("MoSEConfig: " + "; ".join(problems))

    @property
    def padded_vocab_size(self):
        return -(-self.vocab_size // 64) * 64  # multiple of 64: faster matmuls, unused rows never indexed

    @property
    def head_dim(self):
        return self.n_embd // self.n_head


# -----------------------------------------------------------------------------
# blocks

class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021) in the rotate-half layout of transformers' Starcoder2."""

    def __init__(self, config):
        super().__init__()
        hd = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        t = torch.arange(config.max_seq_len, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)                     # (T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)              # (T, hd)
        self.register_buffer('cos', emb.cos(), persistent=False)
        self.register_buffer('sin', emb.sin(), persistent=False)

    def forward(self, x, T):  # x: (B, nh, T, hd)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def attention(q, k, v, mask, dropout_p):
    """Bidirectional grouped-query attention. q: (B, nh, T, hd); k, v: (B, nkv, T, hd);
    mask: (B, T) bool, True at real tokens, or None when no row is padded."""
    B, nh, T, hd = q.shape
    if flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        # variable-length kernel on the unpadded tokens: no compute is spent on padding
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=q.device)
        lens = mask.sum(1, dtype=torch.int32)                                   # (B,)
        cu = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))                   # (B+1,)
        idx = mask.flatten().nonzero().squeeze(1)                               # (N,)
        unpad = lambda x: x.transpose(1, 2).reshape(B * T, x.size(1), hd)[idx]  # (N, heads, hd)
        maxlen = int(lens.max())
        y = flash_attn_varlen_func(unpad(q), unpad(k), unpad(v), cu, cu, maxlen, maxlen,
                                   dropout_p=dropout_p, causal=False)          # (N, nh, hd)
        out = q.new_zeros(B * T, nh, hd)
        out[idx] = y
        return out.view(B, T, nh, hd).transpose(1, 2)                           # (B, nh, T, hd)
    if not q.is_cuda and q.dtype == torch.bfloat16:
        # on a CPU the bfloat16 SDPA kernel's backward is ~4x slower than the float32 one (512 x 64 tokens,
        # head_dim 32: 212 against 54 ms; bench.py --profile=true at the fine-tuning shape) and less precise:
        # the attention runs in float32, the rest of the block in autocast's bf16
        with torch.autocast('cpu', enabled=False):
            return attention(q.float(), k.float(), v.float(), mask, dropout_p).to(q.dtype)
    attn_mask = None if mask is None else mask[:, None, None, :]               # (B, 1, 1, T): pad keys never attended
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=False, enable_gqa=k.size(1) != nh)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, hd = config.n_embd, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, hd
        self.q_proj = nn.Linear(C, config.n_head * hd, bias=config.bias)
        self.k_proj = nn.Linear(C, config.n_kv_head * hd, bias=config.bias)
        self.v_proj = nn.Linear(C, config.n_kv_head * hd, bias=config.bias)
        self.o_proj = nn.Linear(config.n_head * hd, C, bias=config.bias)
        self.attn_dropout, self.resid_dropout = config.attn_dropout, nn.Dropout(config.resid_dropout)

    def forward(self, x, rope, mask):
        B, T, C = x.shape
        q = rope(self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2), T)     # (B, nh, T, hd)
        k = rope(self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2), T)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)           # (B, nkv, T, hd)
        y = attention(q, k, v, mask, self.attn_dropout if self.training else 0.0)             # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)                                                 # (B, T, C)
        return self.resid_dropout(self.o_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.c_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.resid_dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate='tanh')))


class Block(nn.Module):
    """Pre-LayerNorm StarCoder-2 block, bidirectional."""

    def __init__(self, config):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, rope, mask):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class MLMHead(nn.Module):
    """BERT-style transform (dense, GELU, LayerNorm) then an untied decoder with bias.
    Its input is [h, exit embedding] (width n_embd + conditional_size, paper 2.2)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.n_embd + config.conditional_size, config.n_embd)
        self.norm = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.decoder = nn.Linear(config.n_embd, config.padded_vocab_size)

    def transform(self, x):  # (N, n_embd + conditional_size) -> (N, n_embd)
        return self.norm(F.gelu(self.dense(x), approximate='tanh'))

    def forward(self, x):
        return self.decoder(self.transform(x))                   # (N, padded_vocab)


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits = x @ W^T + b against `targets`, in row chunks, so that the
    (N, V) logits never exist in full (the idea of Liger's fused linear cross-entropy and of Cut
    Cross-Entropy, Wijmans et al. 2024). The gradient of cross-entropy w.r.t. the logits is
    softmax - onehot, so the forward computes the gradients w.r.t. x, W and b chunk by chunk, one
    chunk of logits at a time (chunk=0: as many rows as fit 256 MB of float32 logits); the backward
    only scales them. Returns (loss, correct); a target tied with the row's largest logit counts
    as correct.

    The (c, V) passes are memory-bound, so there are as few as possible, all in the compute dtype:
    one softmax, two row maxima, and the matmuls. The loss needs log-sum-exp, which the softmax
    already holds: with m the largest logit, p_max = exp(m - lse), so lse = m - log(p_max), and
    p_max >= 1/V never underflows."""

    @staticmethod
    def forward(ctx, x, W, b, targets, chunk, need_grad):
        N, dev = x.size(0), x.device.type
        need = [need_grad and n for n in ctx.needs_input_grad[:3]]
        # under autocast, cast x, W and b to the autocast dtype once here, not at every matmul
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        chunk = chunk or max(1, (1 << 26) // W.size(0))  # default: (chunk, V) fp32 logits of <= 256 MB
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        correct = torch.zeros((), dtype=torch.long, device=x.device)
        dx = torch.empty_like(x) if need[0] else None
        dW = torch.zeros_like(W, dtype=torch.float32) if need[1] and N > chunk else None
        db = torch.zeros_like(b, dtype=torch.float32) if need[2] else None
        with torch.autocast(dev, enabled=False):
            xc, Wc, bc = x.to(cdt), W.to(cdt), b.to(cdt)
            for s in range(0, N, chunk):
                xs, t = xc[s:s + chunk], targets[s:s + chunk]
                logits = torch.addmm(bc, xs, Wc.t())                              # (c, V)
                p = torch.softmax(logits, -1)                                     # (c, V)
                m = logits.amax(-1).float()                                       # (c,)
                lt = logits.gather(1, t[:, None]).squeeze(1).float()              # (c,) target logits
                lse = m - p.amax(-1).float().log()                                # (c,)
                loss += (lse - lt).sum()
                correct += (lt >= m).sum()
                if not any(need):
                    continue
                p[torch.arange(len(t), device=x.device), t] -= 1.0                # d(sum CE) / d logits
                if dx is not None:
                    dx[s:s + chunk] = p @ Wc
                if need[1]:
                    g = p.t() @ xs                                                # (V, C)
                    dW = g if dW is None else dW.add_(g)
                if db is not None:
                    db += (p.new_ones(1, len(t)) @ p).squeeze(0)                  # (V,): a matmul, not a slow reduction
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in (dx, dW, db)))
        ctx.has, ctx.dtypes, ctx.N = (dx is not None, dW is not None, db is not None), (x.dtype, W.dtype, b.dtype), N
        return loss / N, correct

    @staticmethod
    def backward(ctx, grad_loss, grad_correct):
        scale = grad_loss / ctx.N
        dx, dW, db = ((g * scale).to(dt) if h else None
                      for g, h, dt in zip(ctx.saved_tensors, ctx.has, ctx.dtypes))
        return dx, dW, db, None, None, None


class ProjectionHead(nn.Module):
    """Retrieval head of one exit: two n_embd x n_embd linears (sizes of the released
    fine-tuned heads; LeakyReLU as in the authors' earlier bigcode-encoder code)."""

    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.n_embd, config.n_embd)
        self.fc2 = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x):
        return self.fc2(F.leaky_relu(self.fc1(x)))


class ClassifierHead(nn.Module):
    """Classifier of one exit on <cls>: dense, tanh, linear, as the RoBERTa classification
    head used by the CodeXGLUE BigCloneBench baselines."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.resid_dropout)
        self.out_proj = nn.Linear(config.n_embd, config.n_classes)

    def forward(self, x):
        return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(x)))))


# -----------------------------------------------------------------------------
# the model

class MoSE(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.embd_dropout = nn.Dropout(config.embd_dropout)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = nn.LayerNorm(config.n_embd, eps=config.norm_eps) if config.final_norm or config.exit_norm else None
        self.rope = RotaryEmbedding(config)
        # pre-training heads, shared by all exits and conditioned on the exit (paper 2.2)
        self.exit_embedding = nn.Embedding(len(config.exit_layers), config.conditional_size)
        self.mlm_head = MLMHead(config)
        self.icc_head = nn.Linear(config.n_embd + config.conditional_size, 2)
        # fine-tuning heads, one per exit (paper 4.1, 4.2)
        self.proj = nn.ModuleList([ProjectionHead(config) for _ in config.exit_layers]) if config.proj_heads else None
        self.classifier = (nn.ModuleList([ClassifierHead(config) for _ in config.exit_layers])
                           if config.n_classes else None)
        if config.center:  # the running mean of each exit's pooled state (B, C) -> (C,), for eval
            self.register_buffer('pool_mean', torch.zeros(len(config.exit_layers), config.n_embd))
        self.init_weights()

    def init_weights(self):
        """The one init. Every Linear and Embedding weight ~ N(0, init_std), biases 0,
        LayerNorms 1 and 0; then the residual output projections (o_proj, c_proj) get
        std init_std / sqrt(2 * n_layer), so the residual stream's variance does not grow
        with depth (GPT-2, Radford et al. 2019, section 2.3).
        embed_std, when set, is the token embedding's std: O(1) entries, as muP prescribes for
        input embeddings. The released 0.018 suits width 1024 at lr 1e-5; at width 128 and lr
        1e-3 it leaves token states of norm ~0.2 that the first Adam steps on the shared biases and
        projections overwrite, so that every input maps to one vector (README: diagnosis). The
        blocks keep init_std, so that at the start each one adds little to its input and depth
        does not wash the tokens out (rank collapse, Dong et al. 2021)."""
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.layers:
            for m in (block.self_attn.o_proj, block.mlp.c_proj):
                nn.init.normal_(m.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))
        if self.config.embed_std:
            nn.init.normal_(self.embed_tokens.weight, mean=0.0, std=self.config.embed_std)

    # --- forward -------------------------------------------------------------

    def exit_index(self, exit):
        if exit not in self.config.exit_layers:
            raise ValueError(f"exit {exit!r} is not configured; valid exits: {list(self.config.exit_layers)}")
        return self.config.exit_layers.index(exit)

    def forward(self, idx, exits=None, mask=None):
        """Hidden states at the requested exits, running no block past the deepest one.
        idx: (B, T) token ids, left-padded; mask: (B, T) bool, True at real tokens
        (default: idx != pad_id). Returns {exit: (B, T, C)}: the raw output of block k
        for k below the last layer, the final LayerNorm of it at the last layer (at every
        exit with config.exit_norm)."""
        exits = self.config.exit_layers if exits is None else sorted(set(exits))
        for e in exits:
            self.exit_index(e)
        B, T = idx.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.config.max_seq_len}")
        # Reading a tensor's values on the host costs nothing for a CPU tensor and a host-device
        # synchronisation for a GPU one, so only CPU inputs are checked here; batches bound for a GPU
        # are checked on the host where they are made (training.left_pad).
        on_host = idx.device.type == 'cpu' and not torch.compiler.is_compiling()
        if on_host:
            check_token_ids(idx, self.config.vocab_size)
        if mask is None:
            mask = idx != self.config.pad_id
        if on_host and bool(mask.all()):
            mask = None  # no padding: lets SDPA take its fastest kernels
        x = self.embd_dropout(self.embed_tokens(idx))  # (B, T, C)
        out = {}
        for i, block in enumerate(self.layers[:exits[-1]], start=1):
            x = block(x, self.rope, mask)
            if i in exits:
                normed = self.config.exit_norm or (i == self.config.n_layer and self.config.final_norm)
                out[i] = self.norm(x) if normed else x
        return out

    def _condition(self, h, exit):  # (..., C) -> (..., C + conditional_size)
        cond = self.exit_embedding.weight[self.exit_index(exit)].to(h.dtype)
        return torch.cat([h, cond.expand(*h.shape[:-1], -1)], dim=-1)

    def mlm_logits(self, h, exit, positions):
        """MLM logits at the masked positions only. h: (B, T, C); positions: (N,) flat
        indices into B*T. Returns (N, padded_vocab): the reference mlm_loss is checked against."""
        h = h.reshape(-1, h.size(-1))[positions]  # (N, C): never the whole sequence
        return self.mlm_head(self._condition(h, exit))

    def mlm_loss(self, h, exit, positions, targets, chunk=0):
        """Mean MLM cross-entropy and the number of correct predictions at the masked positions,
        through LinearCrossEntropy: the same value as F.cross_entropy(mlm_logits(...), targets)
        without materialising the (N, V) logits. chunk: rows per chunk (0 = LinearCrossEntropy's default)."""
        x = h.reshape(-1, h.size(-1))[positions]                    # (N, C)
        head = self.mlm_head
        x = head.transform(self._condition(x, exit))                # (N, C)
        return LinearCrossEntropy.apply(x, head.decoder.weight, head.decoder.bias, targets, chunk,
                                        torch.is_grad_enabled())

    def icc_logits(self, h, exit):
        """In-context classification logits on the final <cls>. h: (B, T, C) -> (B, 2)."""
        return self.icc_head(self._condition(h[:, -1], exit))

    def exit_weights(self, weighting='depth'):
        """{exit i: weight of its loss}: 'depth' = i / n_layer, deeper exits weighing more (paper 2.2,
        pre-training and the paper's fine-tuning); 'uniform' = 1 at every exit (finetune.py's setting)."""
        if weighting not in EXIT_WEIGHTINGS:
            raise ValueError(f"exit_weighting={weighting!r}: expected one of {', '.join(EXIT_WEIGHTINGS)}")
        return {e: e / self.config.n_layer if weighting == 'depth' else 1.0 for e in self.config.exit_layers}

    def pretrain_loss(self, idx, mask, positions, targets, icc_labels, exits=None):
        """Self-distillation loss (paper 2.2): sum over exits i of (i / n_layer) * (MLM_i + ICC_i).
        positions: (N,) flat indices of the MLM-selected tokens, targets: (N,) their original ids,
        icc_labels: (B,). Returns the total and {exit: (4,) detached statistics}, whose entries are
        named by EXIT_STATS (a tensor, so that micro-steps add up and ranks all-reduce it in one go)."""
        hs = self(idx, exits, mask)
        weights = self.exit_weights()
        total, stats = 0.0, {}
        for e, h in hs.items():
            l_mlm, correct = self.mlm_loss(h, e, positions, targets)
            icc = self.icc_logits(h, e)                             # (B, 2)
            l_icc = F.cross_entropy(icc.float(), icc_labels)
            total = total + weights[e] * (l_mlm + l_icc)
            named = {'mlm_loss': l_mlm.detach(), 'icc_loss': l_icc.detach(), 'mlm_acc': correct.float() / len(targets),
                     'icc_acc': (icc.argmax(-1) == icc_labels).float().mean()}
            stats[e] = torch.stack([named[k] for k in EXIT_STATS])  # (4,)
        return total, stats

    def encode(self, idx, exits, mask=None):
        """L2-normalised embeddings (the final <cls> state, or a mean of token states with
        config.pooling 'mean' / 'text'), through each exit's projection head when the model has
        them. exits: an int (returns (B, C)) or a list (returns {exit: (B, C)}); a list costs one
        forward to its deepest exit."""
        single = isinstance(exits, int)
        hs = self(idx, [exits] if single else exits, mask)
        if self.config.pooling != 'cls':
            w = idx != self.config.pad_id if mask is None else mask               # (B, T)
            if self.config.pooling == 'text':
                pos = torch.arange(idx.shape[1], device=idx.device).expand_as(idx)  # (B, T)
                last_sep = torch.where(idx == self.config.sep_id, pos, -1).amax(1, keepdim=True)  # (B, 1)
                w = w & (pos > last_sep)
            w = w.unsqueeze(-1)                                                  # (B, T, 1)
        out = {}
        for e, h in hs.items():
            if self.config.pooling != 'cls':
                z = (h * w.to(h.dtype)).sum(1) / w.sum(1).clamp(min=1).to(h.dtype)  # (B, C)
            else:
                z = h[:, -1]                                        # (B, C): the final <cls>
            j = self.exit_index(e)
            if self.config.center:
                z = self._center(z, j)
            if self.proj is not None:
                z = self.proj[j](z)
            out[e] = F.normalize(z.float(), dim=-1)
        return out[exits] if single else out

    def _center(self, z, j, momentum=0.1):  # (B, C) -> (B, C)
        if not self.training:
            return z - self.pool_mean[j].to(z.dtype)
        m = z.mean(0)                                               # (C,): gradient flows through it
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            from torch.distributed.nn.functional import all_reduce  # differentiable
            m = all_reduce(m) / torch.distributed.get_world_size()
        if torch.is_grad_enabled():  # once a batch: GradCache's no-grad pass re-encodes the same inputs
            with torch.no_grad():
                self.pool_mean[j].lerp_(m.detach().to(self.pool_mean.dtype), momentum)
        return z - m

    def classify(self, idx, exits=None, mask=None):
        """Per-exit classifier logits on <cls>: {exit: (B, n_classes)}."""
        if self.classifier is None:
            raise ValueError("this model has no classifier heads (config.n_classes == 0)")
        return {e: self.classifier[self.exit_index(e)](h[:, -1]) for e, h in self(idx, exits, mask).items()}

    # --- sizes and cost ------------------------------------------------------

    def num_params(self, exit=None, heads=False):
        """Backbone parameters needed to run up to `exit` (default: all), i.e. the
        embedding, the blocks and, at the last layer, the final norm; plus heads if asked."""
        exit = self.config.n_layer if exit is None else exit
        self.exit_index(exit)
        n = self.embed_tokens.weight.numel() + sum(p.numel() for b in self.layers[:exit] for p in b.parameters())
        if exit == self.config.n_layer and self.norm is not None:
            n += sum(p.numel() for p in self.norm.parameters())
        if heads:
            n += sum(p.numel() for name, p in self.named_parameters()
                     if name.split('.')[0] in ('exit_embedding', 'mlm_head', 'icc_head', 'proj', 'classifier'))
        return n

    def estimate_flops(self, seq_len, exit=None, mlm_tokens=0):
        """Forward FLOPs of one sequence of `seq_len` tokens up to `exit` (a multiply-add
        counts 2): the block matmuls, the attention scores and weighted sums, and, if
        mlm_tokens > 0, the MLM head on that many tokens at every exit up to `exit`."""
        cfg = self.config
        exit = cfg.n_layer if exit is None else exit
        self.exit_index(exit)
        C, hd = cfg.n_embd, cfg.head_dim
        per_layer = 2 * seq_len * (C * cfg.n_head * hd * 2 + C * cfg.n_kv_head * hd * 2  # q, o, k, v
                                   + 2 * C * cfg.intermediate_size)                   # c_fc, c_proj
        per_layer += 2 * 2 * seq_len * seq_len * cfg.n_head * hd                        # q @ k^T and att @ v
        n_exits = sum(e <= exit for e in cfg.exit_layers)
        head = 2 * mlm_tokens * ((C + cfg.conditional_size) * C + C * cfg.padded_vocab_size) * n_exits
        return exit * per_layer + head

    # --- optimiser -----------------------------------------------------------

    def configure_optimizers(self, weight_decay, learning_rate, betas, eps, device_type, embed_lr_mult=1.0):
        """AdamW with weight decay on tensors of 2+ dimensions only (matmul weights and
        embeddings); biases and LayerNorm parameters are not decayed. embed_lr_mult != 1 puts the
        token embedding in a group of its own (no decay) whose lr is that multiple of the others:
        an embedding initialised at std 1 (embed_std) moves at lr 1e-3 by 0.1% a step, while the
        lexical matching a retrieval model starts from needs several % (CodeSearchNet's NBoW: lr
        1e-2 on std 0.1; muP gives input embeddings the larger Adam lr too). Each group's
        'lr_mult' is what a training loop multiplies its scheduled lr by."""
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        own = embed_lr_mult != 1.0
        rest = [p for n, p in params if not (own and n == 'embed_tokens.weight')]
        groups = [{'params': [p for p in rest if p.dim() >= 2], 'weight_decay': weight_decay, 'lr_mult': 1.0},
                  {'params': [p for p in rest if p.dim() < 2], 'weight_decay': 0.0, 'lr_mult': 1.0}]
        if own:
            groups.append({'params': [p for n, p in params if n == 'embed_tokens.weight'], 'weight_decay': 0.0,
                           'lr_mult': embed_lr_mult})
        for g in groups:
            g['lr'] = learning_rate * g['lr_mult']
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=device_type == 'cuda')

    # --- truncation, save, load ---------------------------------------------

    def truncated(self, exit, keep_exits=None):
        """A model holding only the blocks and heads up to `exit`, for deployment. Its exits are
        `keep_exits` (default: the configured exits <= `exit`), with the same representations as
        here; exit-indexed tensors (exit embedding rows, per-exit heads) follow their exits."""
        self.exit_index(exit)
        keep = [e for e in self.config.exit_layers if e <= exit] if keep_exits is None else sorted(keep_exits)
        if not keep or keep[-1] != exit:
            raise ValueError(f"keep_exits {keep} must end with the truncation exit {exit}")
        rows = [self.exit_index(e) for e in keep]
        cfg = MoSEConfig(**{**asdict(self.config), 'n_layer': exit, 'exit_layers': tuple(keep),
                            'final_norm': self.config.final_norm and exit == self.config.n_layer})
        small = MoSE(cfg)
        sd = {}
        for k in small.state_dict():
            head, _, rest = k.partition('.')
            if k in ('exit_embedding.weight', 'pool_mean'):  # one row an exit
                sd[k] = self.state_dict()[k][rows]
            elif head in ('proj', 'classifier'):  # '<head>.<i>.<param>': the i-th kept exit's head
                i, _, param = rest.partition('.')
                sd[k] = self.state_dict()[f"{head}.{rows[int(i)]}.{param}"]
            else:
                sd[k] = self.state_dict()[k]
        load_state(small, sd, where='truncated')
        return small.to(next(self.parameters()).dtype).train(self.training)

    def save(self, path):
        """Write {'model', 'config'} atomically (data.atomic_open)."""
        with atomic_open(path, 'wb') as f:
            torch.save({'model': self.state_dict(), 'config': config_to_dict(self.config)}, f)

    @classmethod
    def from_checkpoint(cls, ckpt, where='checkpoint'):
        """The model of a checkpoint dict: a training checkpoint ('model' and 'model_config') or
        what `save` writes ('model' and 'config')."""
        if not isinstance(ckpt, dict) or 'model' not in ckpt or not ({'config', 'model_config'} & set(ckpt)):
            raise ValueError(f"{where}: not a MoSE checkpoint (expected 'model' and 'model_config' keys)")
        model = cls(config_from_dict(ckpt.get('model_config', ckpt.get('config')), where=where))
        load_state(model, ckpt['model'], where=where)
        return model

    @classmethod
    def load(cls, path):
        """The model of a checkpoint file (training.load_model also finds the newest of a directory)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} not found")
        return cls.from_checkpoint(load_checkpoint(path), where=str(path))

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, verbose=True):
        """Load a released ModularStarEncoder directory: config.json + model.safetensors
        (or a sharded index), backbone keys as transformers' Starcoder2Model under a prefix
        (detected). Heads whose names match are loaded; the keys left unused and the
        parameters left at their init are printed."""
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError("from_pretrained needs the safetensors package: pip install safetensors") from None
        cfg_path = os.path.join(path, 'config.json')
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{cfg_path} not found (expected a released checkpoint directory)")
        with open(cfg_path) as f:
            hf = json.load(f)
        config = config_from_hf(hf, where=cfg_path)
        index = os.path.join(path, 'model.safetensors.index.json')
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)['weight_map'].values()))
        else:
            files = ['model.safetensors']
        sd = {}
        for name in files:
            fp = os.path.join(path, name)
            if not os.path.isfile(fp):
                raise FileNotFoundError(f"{fp} not found")
            sd.update(load_file(fp))
        emb = [k for k in sd if k.endswith('embed_tokens.weight')]
        if len(emb) != 1:
            raise ValueError(f"{path}: expected one '*embed_tokens.weight' tensor to detect the backbone prefix, found {emb}")
        prefix = emb[0][:-len('embed_tokens.weight')]
        model = cls(config)
        ours = model.state_dict()
        mapped, unused = {}, []
        for k, v in sd.items():
            name = k[len(prefix):] if k.startswith(prefix) else k
            if name in ours:
                mapped[name] = v
            else:
                unused.append(k)
        backbone = [k for k in ours if k.split('.')[0] in ('embed_tokens', 'layers', 'norm')]
        missing = [k for k in backbone if k not in mapped]
        if missing:
            raise ValueError(f"{path}: backbone tensors missing under prefix {prefix!r}: {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}")
        heads = [k for k in ours if k.split('.')[0] in ('proj', 'classifier', 'pool_mean') and k not in mapped]
        if heads:  # config.json declares them (projection_heads, n_classes): left at init they would give noise
            raise ValueError(f"{path}: config.json declares per-exit heads whose tensors are absent: {heads[:3]}"
                             f"{' ...' if len(heads) > 3 else ''}")
        load_state(model, {k: v.to(dtype) for k, v in mapped.items()}, where=path, strict=False)
        if verbose:
            print(f"from_pretrained: prefix {prefix!r}, {len(mapped)} tensors loaded")
            print(f"  unused keys ({len(unused)}): {unused}")
            print(f"  left at init ({len(ours) - len(mapped)}): {[k for k in ours if k not in mapped]}")
        return model.to(dtype)


# -----------------------------------------------------------------------------
# config and state-dict helpers

def load_checkpoint(path):
    """Read a checkpoint file; never executes code from it (weights_only=True)."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def check_token_ids(idx, vocab_size):
    """Raise a one-line ValueError naming the first id of the CPU tensor idx outside [0, vocab_size)."""
    if idx.numel() and (idx.min() < 0 or idx.max() >= vocab_size):
        bad = idx[(idx < 0) | (idx >= vocab_size)][0].item()
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")


def config_to_dict(config):
    d = asdict(config)
    d['exit_layers'] = list(d['exit_layers'])  # plain types only: loadable with weights_only=True
    return d


def config_from_dict(d, where='config'):
    known = {f.name for f in fields(MoSEConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown model config keys {unknown}")
    return MoSEConfig(**d)


def config_from_hf(hf, where='config.json'):
    """Map a transformers Starcoder2 / ModularStarEncoder config.json to MoSEConfig."""
    if hf.get('hidden_act', 'gelu_pytorch_tanh') not in ('gelu_pytorch_tanh', 'gelu_new'):
        raise ValueError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (expected gelu_pytorch_tanh)")
    if hf.get('norm_type', 'layer_norm') != 'layer_norm':
        raise ValueError(f"{where}: norm_type {hf['norm_type']!r} is not supported (expected layer_norm)")
    rope = hf.get('rope_theta') or (hf.get('rope_parameters') or {}).get('rope_theta', 10000.0)
    n_layer = hf['num_hidden_layers']
    return MoSEConfig(
        vocab_size=hf['vocab_size'], n_layer=n_layer, n_embd=hf['hidden_size'],
        n_head=hf['num_attention_heads'], n_kv_head=hf.get('num_key_value_heads', hf['num_attention_heads']),
        intermediate_size=hf['intermediate_size'], rope_theta=float(rope),
        max_seq_len=hf.get('max_position_embeddings', 2048), norm_eps=hf.get('norm_epsilon', 1e-5),
        bias=hf.get('use_bias', True), attn_dropout=hf.get('attention_dropout', 0.0),
        resid_dropout=hf.get('residual_dropout', 0.0), embd_dropout=hf.get('embedding_dropout', 0.0),
        init_std=hf.get('initializer_range', 0.02),
        exit_layers=tuple(hf.get('matryoshka_layers') or (n_layer,)),
        conditional_size=hf.get('conditional_size', 4),
        pad_id=hf['pad_token_id'] if hf.get('pad_token_id') is not None else 0,
        # what export.py adds to the Starcoder2 fields (a released config has none of them: the defaults)
        sep_id=hf['sep_token_id'] if hf.get('sep_token_id') is not None else MoSEConfig.sep_id,
        pooling=hf.get('pooling', 'cls'), final_norm=bool(hf.get('final_norm', True)),
        proj_heads=bool(hf.get('projection_heads', False)), n_classes=int(hf.get('n_classes', 0)),
        center=bool(hf.get('center', False)), exit_norm=bool(hf.get('exit_norm', False)))


def load_state(model, sd, where='checkpoint', strict=True):
    """Copy `sd` into `model` with clear errors. Vocabulary tables may hold fewer rows
    than the padded tables here: their rows are copied and the rest left unused (zero)."""
    ours = model.state_dict()
    vocab_keys = ('embed_tokens.weight', 'mlm_head.decoder.weight', 'mlm_head.decoder.bias')
    for k, v in sd.items():
        if k not in ours:
            if strict:
                raise ValueError(f"{where}: unexpected key {k!r} (checkpoint of another config?)")
            continue
        if v.shape != ours[k].shape:
            if k in vocab_keys and v.shape[1:] == ours[k].shape[1:] and v.shape[0] <= ours[k].shape[0]:
                padded = torch.zeros_like(ours[k])
                padded[:v.shape[0]] = v
                v = padded
            else:
                raise ValueError(f"{where}: shape of {k!r} is {tuple(v.shape)}, this model expects {tuple(ours[k].shape)}")
        ours[k].copy_(v)
    if strict:
        missing = [k for k in ours if k not in sd]
        if missing:
            raise ValueError(f"{where}: missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
