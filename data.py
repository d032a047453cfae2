"""
Data formats shared by prepare, pretrain, finetune and evaluate.

1. ICC shards (pre-training, paper 2.1 / Fig. 2), binary little-endian, one file per shard:
       int64  header[8]  = [MAGIC 0x4D6F5345 ("MoSE"), VERSION 1, DTYPE_UINT32 4, n_tokens, n_seqs, 0, 0, 0]
       uint32 tokens[n_tokens]          every sequence is <sep> snippet (<sep> snippet)* <cls>
       int64  offsets[n_seqs + 1]       sequence i is tokens[offsets[i]:offsets[i+1]]
       uint8  labels[n_seqs]            ICC label: 1 = one repository, 0 = two interleaved
   and `manifest.json` beside them, written last: its presence marks a complete dataset.
2. Benchmark and fine-tuning files as distributed (read, never downloaded): CodeSearchNet,
   CodeXGLUE code-to-code-trans, POJ-104, BigCloneBench, SynthCoNL.
3. Fine-tuning pairs, jsonl, one a line (what finetune.py reads):
       {"kind": "text-code" | "code-code", "query": str, "query_lang": null | language,
        "code": str, "code_lang": str, "repo": str, "id": str}

Everything is written to a temp file in the same directory and renamed (os.replace) when complete.
Bad input raises ValueError / FileNotFoundError with one line naming the file (and line) at fault.
"""
import contextlib
import glob
import gzip
import io
import json
import os
import re
import sys
import tokenize as pytokenize

import numpy as np

MAGIC, VERSION, DTYPE_UINT32 = 0x4D6F5345, 1, 4
HEADER_BYTES = 8 * 8


# ----------------------------------------------------------------------------- output directories and atomic writes

def make_dirs(path):
    """os.makedirs(path, exist_ok=True), returning the directories it created, outermost first, so
    that a run stopped by bad input can take them back (remove_empty_dirs) and leave nothing behind."""
    new, p = [], os.path.abspath(path)
    while not os.path.exists(p):
        new.append(p)
        p = os.path.dirname(p)
    os.makedirs(path, exist_ok=True)
    return new[::-1]


def remove_empty_dirs(dirs):
    """Remove those of `dirs` that are still empty, innermost first (a directory with files stays)."""
    for d in reversed(dirs):
        try:
            os.rmdir(d)
        except OSError:
            pass


@contextlib.contextmanager
def atomic_open(path, mode='w', fsync=False, **kw):
    """The one atomic writer: write `path + '.tmp'`, rename it over `path` only if the block
    finishes, so that `path` is always absent or complete. fsync=True: on disk before the rename
    (a checkpoint survives a power cut too)."""
    tmp = f"{path}.tmp"
    try:
        with (gzip.open(tmp, mode, **kw) if str(path).endswith('.gz') else open(tmp, mode, **kw)) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    with atomic_open(path, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=1)
        f.write('\n')


def built_with(d, settings):
    """True if directory d holds a manifest.json written with these settings: a complete build of
    them, reused on a rerun."""
    try:
        with open(os.path.join(d, 'manifest.json')) as f:
            return json.load(f).get('settings') == settings
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- ICC shards

def write_shard(path, seqs, labels):
    """seqs: list of int sequences (lists or arrays), labels: one 0/1 per sequence."""
    if len(seqs) != len(labels):
        raise ValueError(f"{path}: {len(seqs)} sequences but {len(labels)} labels")
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if seqs else np.zeros(0, np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2 ** 32):
        raise ValueError(f"{path}: token ids must fit in uint32")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{path}: labels must be 0 or 1")
    header = np.array([MAGIC, VERSION, DTYPE_UINT32, tokens.size, len(seqs), 0, 0, 0], dtype='<i8')
    with atomic_open(path, 'wb') as f:
        f.write(header.tobytes())
        f.write(tokens.astype('<u4').tobytes())
        f.write(offsets.astype('<i8').tobytes())
        f.write(labels.astype(np.uint8).tobytes())


class Shard:
    """A validated ICC shard: tokens is a read-only memmap, offsets and labels are in memory."""

    def __init__(self, path):
        self.path = path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: shard not found")
        size = os.path.getsize(path)
        if size < HEADER_BYTES:
            raise ValueError(f"{path}: truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
        header = np.fromfile(path, dtype='<i8', count=8)
        if header[0] != MAGIC:
            raise ValueError(f"{path}: not an ICC shard (magic {int(header[0]):#x}, expected {MAGIC:#x})")
        if header[1] != VERSION:
            raise ValueError(f"{path}: shard version {header[1]}, this code reads version {VERSION}")
        if header[2] != DTYPE_UINT32:
            raise ValueError(f"{path}: token dtype code {header[2]}, expected {DTYPE_UINT32} (uint32)")
        n_tokens, n_seqs = int(header[3]), int(header[4])
        if n_tokens < 0 or n_seqs < 0:
            raise ValueError(f"{path}: corrupt header (n_tokens={n_tokens}, n_seqs={n_seqs})")
        expected = HEADER_BYTES + 4 * n_tokens + 8 * (n_seqs + 1) + n_seqs
        if size != expected:
            held = max(0, (size - HEADER_BYTES - 9 * n_seqs - 8) // 4)
            what = 'truncated' if size < expected else f'{size - expected} bytes too long'
            raise ValueError(f"{path}: {what}: header says {n_tokens} tokens and {n_seqs} sequences "
                             f"({expected} bytes), file holds {size} bytes (~{held} tokens)")
        self.n_tokens, self.n_seqs = n_tokens, n_seqs
        self.tokens = (np.memmap(path, dtype='<u4', mode='r', offset=HEADER_BYTES, shape=(n_tokens,))
                       if n_tokens else np.zeros(0, np.uint32))
        self.offsets = np.fromfile(path, dtype='<i8', count=n_seqs + 1, offset=HEADER_BYTES + 4 * n_tokens)
        self.labels = np.fromfile(path, dtype=np.uint8, count=n_seqs, offset=expected - n_seqs)
        if self.offsets[0] != 0 or self.offsets[-1] != n_tokens or (np.diff(self.offsets) < 0).any():
            raise ValueError(f"{path}: corrupt offsets (must rise from 0 to n_tokens={n_tokens})")
        if (self.labels > 1).any():
            raise ValueError(f"{path}: corrupt labels (must be 0 or 1)")

    def __len__(self):
        return self.n_seqs

    @property
    def lengths(self):
        return np.diff(self.offsets)

    def get(self, i):
        """(uint32 tokens of sequence i, ICC label)"""
        return np.asarray(self.tokens[self.offsets[i]:self.offsets[i + 1]]), int(self.labels[i])


class ICCData:
    """All shards of one split, indexed by a global sequence number."""

    def __init__(self, shards, manifest):
        self.shards, self.manifest = shards, manifest
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.lengths = np.concatenate([s.lengths for s in shards]) if shards else np.zeros(0, np.int64)
        self.labels = np.concatenate([s.labels for s in shards]) if shards else np.zeros(0, np.uint8)

    def __len__(self):
        return int(self.starts[-1])

    def get(self, i):
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range (0..{len(self) - 1})")
        k = int(np.searchsorted(self.starts, i, side='right')) - 1
        return self.shards[k].get(i - int(self.starts[k]))


def load_icc(data_dir, split, tok_meta=None, vocab_size=None):
    """Open the `split` ('train' / 'val') of an ICC dataset built by prepare.py. `data_dir` is the
    directory of manifest.json (or its parent holding icc/). Checks the tokenizer (a Tokenizer or its
    meta()) and that every token id < vocab_size."""
    from tokenizer import check_tokenizer
    if not os.path.isfile(os.path.join(data_dir, 'manifest.json')) and \
            os.path.isfile(os.path.join(data_dir, 'icc', 'manifest.json')):
        data_dir = os.path.join(data_dir, 'icc')
    mpath = os.path.join(data_dir, 'manifest.json')
    if not os.path.isfile(mpath):
        raise FileNotFoundError(f"{mpath}: not found: no complete ICC dataset there; run `python prepare.py "
                                f"--task=icc --out_dir={os.path.dirname(os.path.normpath(data_dir)) or '.'}` first")
    try:
        with open(mpath, encoding='utf-8') as f:
            m = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{mpath}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(m, dict) or m.get('format') != 'mose-icc':
        raise ValueError(f"{mpath}: not an ICC manifest (expected \"format\": \"mose-icc\")")
    if m.get('version') != VERSION:
        raise ValueError(f"{mpath}: manifest version {m.get('version')!r}, this code reads {VERSION}")
    for key in ('tokenizer', 'splits', 'max_token_id', 'max_len'):
        if key not in m:
            raise ValueError(f"{mpath}: missing key {key!r}")
    if split not in m['splits']:
        raise ValueError(f"{mpath}: no split {split!r} (has {', '.join(m['splits'])})")
    if tok_meta is not None:
        check_tokenizer(m['tokenizer'], tok_meta, mpath)
    if vocab_size is not None and m['max_token_id'] >= vocab_size:
        raise ValueError(f"{mpath}: token id {m['max_token_id']} does not fit vocab_size {vocab_size} "
                         f"(data tokenizer n_vocab {m['tokenizer'].get('n_vocab')})")
    info = m['splits'][split]
    shards = [Shard(os.path.join(data_dir, name)) for name in info['shards']]
    n_seqs, n_tok = sum(len(s) for s in shards), sum(s.n_tokens for s in shards)
    if (n_seqs, n_tok) != (info['sequences'], info['tokens']):
        raise ValueError(f"{mpath}: split {split!r} lists {info['sequences']} sequences / {info['tokens']} tokens, "
                         f"shards hold {n_seqs} / {n_tok}")
    return ICCData(shards, m)


# ----------------------------------------------------------------------------- jsonl

def _open_binary(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found")
    return gzip.open(path, 'rb') if str(path).endswith('.gz') else open(path, 'rb')


def iter_jsonl(path, skip_bad=False, stats=None):
    """Yield (line number, dict) of a .jsonl or .jsonl.gz file. A malformed line is an error
    naming path:line, or with skip_bad is skipped and counted in stats['bad_lines']. Bytes that
    are not UTF-8 are replaced (U+FFFD) and the lines counted in stats['replaced_lines']."""
    stats = {} if stats is None else stats
    stats.setdefault('bad_lines', 0)
    stats.setdefault('replaced_lines', 0)
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode('utf-8')
            except UnicodeDecodeError:
                line = raw.decode('utf-8', errors='replace')
                stats['replaced_lines'] += 1
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                if not skip_bad:
                    raise ValueError(f"{path}:{lineno}: malformed JSON ({e}); fix the line or pass "
                                     f"--skip_bad_lines=true") from None
                stats['bad_lines'] += 1
                continue
            yield lineno, obj


def read_jsonl(path, skip_bad=False, stats=None, quiet=False):
    """All rows of a jsonl(.gz) file as dicts. An empty file is an error; skipped and repaired lines
    are counted in `stats` and reported on stderr."""
    stats = {} if stats is None else stats
    rows = [obj for _, obj in iter_jsonl(path, skip_bad, stats)]
    if not quiet and (stats['bad_lines'] or stats['replaced_lines']):
        print(f"warning: {path}: skipped {stats['bad_lines']} malformed lines, replaced undecodable bytes "
              f"in {stats['replaced_lines']} lines", file=sys.stderr)
    if not rows:
        raise ValueError(f"{path}: empty (no JSON rows)")
    return rows


def _require(row, fields, path, lineno):
    for k in fields:
        if k not in row:
            raise ValueError(f"{path}:{lineno}: missing field {k!r}")


def _jsonl_files(path_or_dir, what):
    if os.path.isdir(path_or_dir):
        files = sorted(glob.glob(os.path.join(path_or_dir, '**', '*.jsonl'), recursive=True) +
                       glob.glob(os.path.join(path_or_dir, '**', '*.jsonl.gz'), recursive=True))
        if not files:
            raise FileNotFoundError(f"{path_or_dir}: no .jsonl or .jsonl.gz files ({what})")
        return files
    if not os.path.isfile(path_or_dir):
        raise FileNotFoundError(f"{path_or_dir}: not found ({what})")
    return [path_or_dir]


# ----------------------------------------------------------------------------- CodeSearchNet

def _docstring_span(code):
    """(start, end) character span of the docstring of the first def/class in `code`, or None.
    Uses Python's tokenizer, which also reads the Python 2 code found in CodeSearchNet."""
    toks = pytokenize.generate_tokens(io.StringIO(code).readline)
    state, depth = 'def', 0  # 'def' -> wait for the header's ':' -> first statement
    line_starts = [0]
    for line in code.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    try:
        for t in toks:
            if state == 'def':
                if t.type == pytokenize.NAME and t.string in ('def', 'class'):
                    state = 'header'
            elif state == 'header':
                if t.type == pytokenize.OP and t.string in '([{':
                    depth += 1
                elif t.type == pytokenize.OP and t.string in ')]}':
                    depth -= 1
                elif t.type == pytokenize.OP and t.string == ':' and depth == 0:
                    state = 'body'
            elif state == 'body':
                if t.type in (pytokenize.NEWLINE, pytokenize.NL, pytokenize.INDENT, pytokenize.COMMENT):
                    continue
                if t.type != pytokenize.STRING:
                    return None
                start = line_starts[t.start[0] - 1] + t.start[1]
                end = line_starts[t.end[0] - 1] + t.end[1]
                return start, end
    except (pytokenize.TokenError, IndentationError, SyntaxError):
        return None
    return None


def strip_docstring(code, language='python'):
    """`code` without its docstring (CodeSearchNet's Python `code` still holds it, which leaks the
    query into the candidate; benchmarks.md). The docstring's lines are removed when it stands on
    lines of its own, else just the string. Other languages keep their docstring outside `code` in
    CodeSearchNet (a comment before the function): returned unchanged."""
    if language != 'python':
        return code
    span = _docstring_span(code)
    if span is None:
        return code
    start, end = span
    line_start = code.rfind('\n', 0, start) + 1
    line_end = code.find('\n', end)
    line_end = len(code) if line_end < 0 else line_end + 1
    if not code[line_start:start].strip() and not code[end:line_end].strip(' \t\r\n;'):
        return code[:line_start] + code[line_end:]
    return code[:start] + code[end:].lstrip(' \t;')


CSN_FIELDS = ('repo', 'path', 'func_name', 'original_string', 'language', 'code', 'code_tokens',
              'docstring', 'docstring_tokens', 'url')


def load_codesearchnet(path_or_dir, language=None, skip_bad=False):
    """Rows of CodeSearchNet jsonl(.gz) files (a file, or a directory such as the distributed
    `{lang}/final/jsonl/{split}/`). Returns dicts: id (= url), query (= ' '.join(docstring_tokens),
    CodeBERT's query; `docstring` if there are no tokens), code (docstring removed), language, repo,
    path, func_name."""
    out = []
    for path in _jsonl_files(path_or_dir, 'CodeSearchNet'):
        for lineno, r in iter_jsonl(path, skip_bad):
            _require(r, ('url', 'code', 'language', 'docstring'), path, lineno)
            lang = r['language']
            if language is not None and lang != language:
                continue
            query = ' '.join(r.get('docstring_tokens') or []) or r['docstring']
            out.append({'id': r['url'], 'query': query, 'code': strip_docstring(r['code'], lang),
                        'language': lang, 'repo': r.get('repo', ''), 'path': r.get('path', ''),
                        'func_name': r.get('func_name', '')})
    if not out:
        raise ValueError(f"{path_or_dir}: no CodeSearchNet rows" + (f" for language {language!r}" if language else ''))
    return out


# ----------------------------------------------------------------------------- CodeXGLUE, POJ-104, BigCloneBench

def _read_lines(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found")
    with open(path, encoding='utf-8', errors='replace', newline='') as f:
        return f.read().splitlines()


def load_codexglue_ct(data_dir, split):
    """CodeXGLUE code-to-code-trans: line i of {split}.java-cs.txt.java and .cs are one function.
    Returns [{'id': i, 'java': str, 'cs': str}]."""
    java = _read_lines(os.path.join(data_dir, f'{split}.java-cs.txt.java'))
    cs = _read_lines(os.path.join(data_dir, f'{split}.java-cs.txt.cs'))
    if len(java) != len(cs):
        raise ValueError(f"{data_dir}/{split}.java-cs.txt.*: {len(java)} Java lines but {len(cs)} C# lines "
                         f"(the files must be line-aligned)")
    if not java:
        raise ValueError(f"{data_dir}/{split}.java-cs.txt.java: empty")
    return [{'id': i, 'java': j, 'cs': c} for i, (j, c) in enumerate(zip(java, cs))]


def load_poj104(path, skip_bad=False):
    """POJ-104 jsonl rows {label, index, code}; returns them with label and index as str."""
    out = []
    for lineno, r in iter_jsonl(path, skip_bad):
        _require(r, ('label', 'index', 'code'), path, lineno)
        out.append({'label': str(r['label']), 'index': str(r['index']), 'code': r['code']})
    if not out:
        raise ValueError(f"{path}: empty (no JSON rows)")
    return out


def load_bigclonebench(data_dir, split, skip_bad=False):
    """BigCloneBench: data.jsonl {func, idx} + {split}.txt lines `idx1<TAB>idx2<TAB>label`.
    Returns (funcs {idx: code}, pairs [(idx1, idx2, label)], n_skipped): pairs naming an idx that is
    not in data.jsonl are skipped and counted (benchmarks.md)."""
    dpath, ppath = os.path.join(data_dir, 'data.jsonl'), os.path.join(data_dir, f'{split}.txt')
    funcs = {}
    for lineno, r in iter_jsonl(dpath, skip_bad):
        _require(r, ('func', 'idx'), dpath, lineno)
        funcs[str(r['idx'])] = r['func']
    if not funcs:
        raise ValueError(f"{dpath}: empty (no JSON rows)")
    pairs, skipped = [], 0
    for lineno, line in enumerate(_read_lines(ppath), 1):
        if not line.strip():
            continue
        parts = line.split('\t')
        if len(parts) != 3 or parts[2].strip() not in ('0', '1'):
            raise ValueError(f"{ppath}:{lineno}: expected 'idx1<TAB>idx2<TAB>0|1', got {line[:80]!r}")
        a, b, label = parts[0].strip(), parts[1].strip(), int(parts[2])
        if a not in funcs or b not in funcs:
            skipped += 1
            continue
        pairs.append((a, b, label))
    if not pairs:
        raise ValueError(f"{ppath}: no usable pairs ({skipped} refer to ids missing from {dpath})")
    return funcs, pairs, skipped


# ----------------------------------------------------------------------------- SynthCoNL

SYNTHCONL_COLUMNS = ('repository_name', 'func_path_in_repository', 'language2', 'func2', 'language1_CSN',
                     'func1_CSN', 'func_documentation_string', 'func_code_url')


def load_synthconl(path, skip_bad=False):
    """SynthCoNL rows (dicts with its 8 columns) from .parquet (needs pyarrow) or .jsonl(.gz) files;
    `path` may be a file or a directory of them."""
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, '**', '*'), recursive=True)
                       if f.endswith(('.parquet', '.jsonl', '.jsonl.gz')))
        if not files:
            raise FileNotFoundError(f"{path}: no .parquet / .jsonl / .jsonl.gz files (SynthCoNL)")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: not found (SynthCoNL)")
    rows = []
    for f in files:
        if f.endswith('.parquet'):
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ImportError(f"{f}: reading parquet needs pyarrow: pip install pyarrow") from None
            table = pq.read_table(f)
            for c in SYNTHCONL_COLUMNS:
                if c not in table.column_names:
                    raise ValueError(f"{f}: missing column {c!r} (has {', '.join(table.column_names)})")
            rows += table.select(list(SYNTHCONL_COLUMNS)).to_pylist()
        else:
            for lineno, r in iter_jsonl(f, skip_bad):
                for c in SYNTHCONL_COLUMNS:
                    if c not in r:
                        raise ValueError(f"{f}:{lineno}: missing column {c!r}")
                rows.append({c: r[c] for c in SYNTHCONL_COLUMNS})
    if not rows:
        raise ValueError(f"{path}: empty (no SynthCoNL rows)")
    return rows


def synthconl_to_pairs(rows):
    """Each SynthCoNL row gives a text-code pair (documentation <-> func1_CSN) and a code-code pair
    (func1_CSN <-> func2, its translation), paper 4.1 / 5."""
    out = []
    for i, r in enumerate(rows):
        rid = r['func_code_url'] or f"row{i}"
        lang1, lang2 = (r['language1_CSN'] or '').lower(), (r['language2'] or '').lower()
        if r['func_documentation_string'] and r['func1_CSN']:
            out.append(pair_row('text-code', r['func_documentation_string'], None, r['func1_CSN'], lang1,
                                r['repository_name'], f"{rid}#text"))
        if r['func1_CSN'] and r['func2']:
            out.append(pair_row('code-code', r['func1_CSN'], lang1, r['func2'], lang2, r['repository_name'],
                                f"{rid}#code"))
    return out


# ----------------------------------------------------------------------------- fine-tuning pairs

PAIR_FIELDS = ('kind', 'query', 'query_lang', 'code', 'code_lang', 'repo', 'id')


def pair_row(kind, query, query_lang, code, code_lang, repo, id):
    return {'kind': kind, 'query': query, 'query_lang': query_lang, 'code': code, 'code_lang': code_lang,
            'repo': repo, 'id': id}


def _check_pair(r, where):
    for k in PAIR_FIELDS:
        if k not in r:
            raise ValueError(f"{where}: missing field {k!r}")
    if r['kind'] not in ('text-code', 'code-code'):
        raise ValueError(f"{where}: kind must be 'text-code' or 'code-code', got {r['kind']!r}")
    if (r['kind'] == 'text-code') != (r['query_lang'] is None):
        raise ValueError(f"{where}: query_lang must be null exactly for text-code pairs, got {r['query_lang']!r}")
    for k in ('query', 'code'):
        if not isinstance(r[k], str) or not r[k]:
            raise ValueError(f"{where}: {k!r} must be a non-empty string")


def write_pairs(path, rows):
    """Write fine-tuning pairs (validated) as jsonl(.gz), atomically."""
    for i, r in enumerate(rows):
        _check_pair(r, f"{path}: row {i}")
    with atomic_open(path, 'wt', encoding='utf-8') as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in PAIR_FIELDS}, ensure_ascii=False) + '\n')


def read_pairs(path, skip_bad=False):
    rows = []
    for lineno, r in iter_jsonl(path, skip_bad):
        _check_pair(r, f"{path}:{lineno}")
        rows.append(r)
    if not rows:
        raise ValueError(f"{path}: empty (no pairs)")
    return rows


_WORD = re.compile(r"\w+|[^\w\s]")


def simple_tokens(text):
    """Word / punctuation tokens, the granularity of CodeSearchNet's docstring_tokens."""
    return _WORD.findall(text)
