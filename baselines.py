"""
The baselines every retrieval table stands next to (evaluate.py prints them on the same batches):

- chance: the expected MRR of a random ranking of each batch (chance_mrr).
- BM25 (Robertson and Zaragoza 2009): lexical, untrained; identifiers split at snake_case and camelCase.
- NBoW: CodeSearchNet's neural bag of words (Husain et al. 2019, github/CodeSearchNet
  `src/encoders/nbow_seq_encoder.py`), the learned floor: one token-embedding table shared by
  queries and code, the mean of a text's token embeddings, cosine similarity x 20, an in-batch
  softmax in both directions, Adam at lr 1e-2, trained on the fine-tuning pairs for a few epochs
  or at most `max_seconds`. A learned encoder below it is not yet using what it has learned.

    scores = bm25_scores(queries, docs)                      # (Q, N)
    nbow = train_nbow(pairs, tok); z = nbow.embed(texts)     # (n, dim), L2-normalised
"""
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

from metrics import target_ranks

_TERM = re.compile(r'[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+')


def bm25_terms(text):
    """Lower-cased words, identifiers split at snake_case and camelCase (getHTTPResponse -> get http response)."""
    return [t.lower() for t in _TERM.findall(text)]


def bm25_scores(queries, docs, k1=1.2, b=0.75):
    """Okapi BM25 of every query against every document, the documents being the index: (Q, N)
    scores. idf = ln(1 + (N - df + 0.5) / (df + 0.5)) (Lucene's)."""
    vocab = {}
    doc_terms = [[vocab.setdefault(t, len(vocab)) for t in bm25_terms(d)] for d in docs]
    N, V = len(docs), len(vocab)
    tf = np.zeros((N, V), dtype=np.float32)
    for i, terms in enumerate(doc_terms):
        np.add.at(tf[i], terms, 1.0)
    lengths = tf.sum(1, keepdims=True)
    df = (tf > 0).sum(0)
    idf = np.log1p((N - df + 0.5) / (df + 0.5)).astype(np.float32)
    weight = idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths / max(lengths.mean(), 1e-9)))  # (N, V)
    qv = np.zeros((len(queries), V), dtype=np.float32)
    for i, q in enumerate(queries):
        for t in bm25_terms(q):
            if t in vocab:
                qv[i, vocab[t]] += 1.0
    return qv @ weight.T                                                                          # (Q, N)


class NBoW(torch.nn.Module):
    """Mean of token embeddings from one table shared by queries and code. Texts are cut at
    `max_len` tokens (CodeSearchNet: queries 30, code 200; here one cut for both sides)."""

    def __init__(self, tok, dim=128, max_len=200, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.tok, self.max_len = tok, max_len
        self.table = torch.nn.EmbeddingBag(tok.n_vocab, dim, mode='mean')
        with torch.no_grad():
            self.table.weight.copy_(torch.randn(tok.n_vocab, dim, generator=g) * 0.1)

    def ids(self, texts):
        return [ids[:self.max_len] or [self.tok.pad_id] for ids in self.tok.encode_batch(texts)]

    def forward(self, ids):  # a list of token-id lists -> (n, dim), L2-normalised
        lens = torch.tensor([len(x) for x in ids])
        flat = torch.tensor([i for x in ids for i in x], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)[:-1]])
        return F.normalize(self.table(flat, offsets), dim=-1)

    @torch.no_grad()
    def embed(self, texts, batch_size=4096):
        ids = self.ids(texts)
        return torch.cat([self(ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)]) if ids \
            else torch.zeros(0, self.table.embedding_dim)


def train_nbow(pairs, tok, dim=128, epochs=5, batch_size=512, lr=1e-2, scale=20.0, max_seconds=60.0, seed=0):
    """Train an NBoW on (query text, code text) pairs; returns (model, stats). Deterministic for a
    seed, except where `max_seconds` cuts the run short (then the number of steps depends on speed)."""
    from finetune import clip_loss  # the same symmetric in-batch loss as the model's fine-tuning
    torch.manual_seed(seed)
    model = NBoW(tok, dim, seed=seed)
    q_ids, c_ids = model.ids([q for q, _ in pairs]), model.ids([c for _, c in pairs])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    t0, steps, seen, epoch, loss = time.time(), 0, 0, 0, float('nan')
    while epoch < epochs and time.time() - t0 < max_seconds:
        order = rng.permutation(len(pairs))
        for s in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            b = order[s:s + batch_size]
            q, c = model([q_ids[i] for i in b]), model([c_ids[i] for i in b])   # (b, dim) each
            loss_t = clip_loss(q, c, scale)[0]
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            opt.step()
            steps, seen, loss = steps + 1, seen + len(b), loss_t.item()
            if time.time() - t0 >= max_seconds:
                break
        epoch += 1
    model.eval()
    return model, {'epochs': epoch, 'steps': steps, 'pairs_seen': seen, 'seconds': round(time.time() - t0, 1),
                   'final_loss': round(loss, 4), 'pairs': len(pairs)}


# ----------------------------------------------------------------------------- on the model's batches

def baseline_ranks(score, queries, docs, batches):
    """Ranks of a baseline on the same batches as the model: score(queries, docs) -> (q, n) scores
    of the texts of one batch."""
    return np.concatenate([target_ranks(score([queries[i] for i in b], [docs[i] for i in b])) for b in batches])


def chance_mrr(batches):
    """Expected MRR of a random ranking: 1/n sum_r 1/r for a batch of n candidates, averaged over queries."""
    sizes = np.array([len(b) for b in batches], dtype=np.float64)
    return float(np.sum([np.sum(1.0 / np.arange(1, n + 1)) for n in sizes]) / sizes.sum())
