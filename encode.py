"""
Text in, vectors out: strings become MoSE retrieval embeddings at one exit, with the released
instructions (paper 4.1), left padding and batches of similar length, through MoSE.encode (so the
pooling the checkpoint was trained with is the one used).

    enc = load_encoder('out/finetune-retrieval', exit=4)        # a checkpoint, an out_dir or an export.py dir
    code = enc.encode(['def add(a, b):\n    return a + b'], kind='code', language='python')  # (1, C) float32
    query = enc.encode('add two numbers', kind='query')                                    # (C,)
    scores = code @ query                                                                   # cosine similarities

encode_texts(model, tok, texts, exit, ...) is the same without the loader. The vectors are
L2-normalised float32; TextEncoder.encode takes sentence-transformers' arguments where they mean
something here (batch_size, show_progress_bar, convert_to_tensor), and encode_queries /
encode_corpus follow the BEIR / MTEB retrieval interface.
"""
import contextlib
import hashlib
import json
import os

import numpy as np
import torch
from tqdm import tqdm

from tokenizer import check_tokenizer, get_tokenizer
from training import UserError, autocast_context, check_model_tokenizer, left_pad, load_model

KINDS = ('code', 'query')


def text_inputs(tok, texts, kind, language, max_len):
    """Token lists of the released retrieval inputs: <sep>{instruction}<sep>{text}<cls>. language: one
    for all texts or one per text (kind='code' only)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected 'code' or 'query'")
    if kind == 'query':
        return [tok.query_input(t, max_len) for t in texts]
    langs = [language] * len(texts) if language is None or isinstance(language, str) else list(language)
    if len(langs) != len(texts) or any(not isinstance(l, str) or not l for l in langs):
        raise ValueError("kind='code' needs language: one name for all texts (e.g. 'python') or one per text")
    return [tok.code_input(t, l, max_len) for t, l in zip(texts, langs)]


def batched_forward(fn, seqs, batch_size, pad_id, device='cpu', max_seq_len=None, lengths=None, what='encode',
                    vocab_size=None):
    """Run fn(idx (B, T) left-padded) -> {exit: (B, k)} over `seqs` (anything indexable: a list of
    token lists, or an object building sequence i on demand) in batches of similar length: sorted
    longest first (little padding; an out-of-memory shows at once). Returns {exit: (N, k) float32
    on CPU} in the original order. `lengths` (default len(seqs[i])) is only used for sorting; a
    progress bar named `what` shows on runs longer than 10 s."""
    n = len(seqs)
    lengths = [len(seqs[i]) for i in range(n)] if lengths is None else lengths
    order = sorted(range(n), key=lambda i: -lengths[i])
    out = {}
    with tqdm(total=n, desc=what, unit='snippet', disable=not what, delay=10, mininterval=10, leave=False) as bar:
        for s in range(0, n, batch_size):
            ids = order[s:s + batch_size]
            idx = left_pad([np.asarray(seqs[i]) for i in ids], pad_id, max_len=max_seq_len, vocab_size=vocab_size)
            res = fn(idx.to(device))
            for e, v in res.items():
                if e not in out:
                    out[e] = torch.empty(n, v.size(-1), dtype=torch.float32)
                out[e][ids] = v.float().cpu()
            bar.update(len(ids))
    return out


def encoder(model, exits, autocast=None, head='encode'):
    """idx -> {exit: (B, k)}, one forward to the deepest of `exits` without a graph, under autocast
    (default float32): head 'encode' gives the L2-normalised embeddings (B, C), 'classify' the
    classifier's logits (B, n_classes)."""
    forward = getattr(model, head)

    @torch.inference_mode()
    def fn(idx):
        with autocast or contextlib.nullcontext():
            return forward(idx, list(exits))
    return fn


@torch.inference_mode()
def encode_ids(model, seqs, exit, batch_size=32, autocast=None, progress=False):
    """Token lists -> (N, C) float32 numpy embeddings at `exit`, in the order given; a list of exits
    gives {exit: (N, C)} from one forward to the deepest (batched_forward: sorted longest first)."""
    cfg, dev = model.config, next(model.parameters()).device
    exits = [exit] if isinstance(exit, int) else list(exit)
    was_training = model.training
    model.eval()
    z = batched_forward(encoder(model, exits, autocast), seqs, batch_size, cfg.pad_id, dev, cfg.max_seq_len,
                        what=f"encode exit {exit}" if progress else None, vocab_size=cfg.vocab_size)
    model.train(was_training)
    out = {e: z[e].numpy() if e in z else np.empty((0, cfg.n_embd), dtype=np.float32) for e in exits}
    return out[exit] if isinstance(exit, int) else out


def encode_texts(model, tok, texts, exit, kind='code', language=None, batch_size=32, max_len=None, autocast=None,
                 progress=False):
    """Strings -> (N, C) L2-normalised float32 numpy embeddings at `exit` (a list: {exit: (N, C)}, one
    forward). kind: 'code' (the code
    instruction of `language`, one name or one per text) or 'query' (the description instruction);
    max_len: tokens per input, instruction and <cls> included (default: the model's max_seq_len);
    autocast: a context such as training.autocast_context(...)[2] (default float32)."""
    max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
    return encode_ids(model, text_inputs(tok, list(texts), kind, language, max_len), exit, batch_size, autocast,
                      progress)


def fingerprint(model, exit):
    """sha256 of what decides the embeddings at `exit`: the settings of the computation and the
    tensors it reads (the vocabulary's rows, the blocks up to the exit, the final norm where it is
    applied, the exit's projection head). A model and its export at that exit share it."""
    cfg = model.config
    h = hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in (
        'vocab_size', 'n_embd', 'n_head', 'n_kv_head', 'intermediate_size', 'rope_theta', 'norm_eps', 'bias',
        'pad_id', 'sep_id', 'pooling', 'center', 'exit_norm')} | {'exit': exit}, sort_keys=True).encode())
    tensors = [('embed_tokens.weight', model.embed_tokens.weight[:cfg.vocab_size])]
    tensors += [(f'layers.{i}.{n}', p) for i, b in enumerate(model.layers[:exit]) for n, p in b.state_dict().items()]
    if (exit == cfg.n_layer or cfg.exit_norm) and model.norm is not None:
        tensors += [(f'norm.{n}', p) for n, p in model.norm.state_dict().items()]
    if model.proj is not None:
        tensors += [(f'proj.{n}', p) for n, p in model.proj[model.exit_index(exit)].state_dict().items()]
    if cfg.center:
        tensors += [('pool_mean', model.pool_mean[model.exit_index(exit)])]
    for name, t in tensors:
        a = t.detach().float().cpu().contiguous().numpy()
        h.update(f"{name}{tuple(a.shape)}".encode())
        h.update(memoryview(a).cast('B'))
    return h.hexdigest()


class TextEncoder:
    """A model cut at one exit, its tokenizer and its fingerprint: encode strings at that exit."""

    def __init__(self, model, tok, exit, where='', autocast=None):
        self.model, self.tok, self.exit, self.where, self.autocast = model.eval(), tok, exit, where, autocast
        self.fingerprint = fingerprint(model, exit)

    def encode(self, sentences, batch_size=32, show_progress_bar=False, convert_to_tensor=False, kind='query',
               language=None, max_len=None):
        """sentence-transformers' encode: a string gives (C,), a list (N, C); numpy unless convert_to_tensor."""
        single = isinstance(sentences, str)
        z = encode_texts(self.model, self.tok, [sentences] if single else sentences, self.exit, kind, language,
                         batch_size, max_len, self.autocast, show_progress_bar)
        z = z[0] if single else z
        return torch.from_numpy(z) if convert_to_tensor else z

    def encode_queries(self, queries, batch_size=32, **kw):
        return self.encode(list(queries), batch_size, kind='query', **kw)

    def encode_corpus(self, corpus, batch_size=32, language='python', **kw):
        """corpus: strings, or BEIR's dicts with 'text' (and an optional per-document 'language')."""
        docs = [d if isinstance(d, str) else d['text'] for d in corpus]
        langs = [language if isinstance(d, str) else d.get('language', language) for d in corpus]
        return self.encode(docs, batch_size, kind='code', language=langs, **kw)


def resolve_tokenizer(path, ckpt, tokenizer=''):
    """The tokenizer of a model: `tokenizer` when given, else the one the checkpoint records (a
    training checkpoint's 'tokenizer', an export's config.json 'mose_tokenizer'), else the model
    directory itself when it holds vocab.json. Checked against the record when there is one."""
    record = ckpt.get('tokenizer')
    cfg_path = os.path.join(path, 'config.json')
    if record is None and os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            record = json.load(f).get('mose_tokenizer')
    if not tokenizer:
        if os.path.isfile(os.path.join(path, 'vocab.json')):
            tokenizer = path
        elif isinstance(record, dict) and (record.get('source') or record.get('name') == 'cl100k_base'):
            tokenizer = record.get('source') or record['name']
        else:
            raise UserError(f"{path}: records no tokenizer; pass --tokenizer=<its tokenizer dir or cl100k_base>")
    try:
        tok = get_tokenizer(tokenizer)
    except (OSError, ValueError) as e:
        raise UserError(f"tokenizer {tokenizer!r}: {e}") from None
    if isinstance(record, dict):
        check_tokenizer(record, tok, path)
    return tok


def load_encoder(path, exit=0, tokenizer='', device='cpu', dtype='float32', command='python finetune.py'):
    """A TextEncoder of the model at `path` (a checkpoint file, a training out_dir: its newest
    checkpoint, or a directory export.py wrote) cut at `exit` (0: its deepest exit). Bad input
    raises UserError (one line)."""
    try:
        model, ckpt, where = load_model(path, command)
        exits = list(model.config.exit_layers)
        exit = exit or exits[-1]
        if exit not in exits:
            raise UserError(f"exit {exit} is not configured in {where}; valid exits: {exits}")
        tok = resolve_tokenizer(path if os.path.isdir(path) else os.path.dirname(path), ckpt, tokenizer)
        check_model_tokenizer(model, ckpt, tok, where)
        _, _, autocast = autocast_context('cuda' if device.startswith('cuda') else 'cpu', dtype)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from None
    model = model.truncated(exit) if exit < model.config.n_layer else model
    return TextEncoder(model.to(device), tok, exit, where, autocast)
