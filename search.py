"""
Code search over a directory at a chosen exit: what an exit costs and what it finds, on real code.

    python search.py index PATH --exit 4                           # PATH's functions -> search_index.npz
    python search.py query "open a socket and retry on timeout" -k 10
    python search.py index PATH --exit 9 --index=exit9.npz --init_from=mose-exit9   # an export.py directory

index: every named function of the files under PATH whose extension functions.py knows (.py .java
.js .go .rb .php .c .h .cc .cpp ...), extracted with tree-sitter (functions.functions), is embedded
as written, documentation included, with the code instruction of its language (encode.py). The
index file holds the vectors, the file:line and name of each function, the model's fingerprint and
exit, and a sha256 per file, so that a re-index embeds only the files whose content changed; it is
written atomically. query: the text is embedded with the query instruction and the k functions of
highest cosine similarity are printed as `file:line name score`. Both print the model's time at
the exit, the cost side of MoSE's trade-off.
"""
import fnmatch
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch

from data import atomic_open
from encode import encode_ids, load_encoder, text_inputs
from functions import LANGUAGE_OF_EXT, functions, language_of
from stage import fail
from tokenizer import check_tokenizer
from training import UserError

FORMAT, VERSION = 'mose-search-index', 1
SKIP_DIRS = {'__pycache__', 'node_modules'}  # and every directory whose name starts with '.'
USAGE = ('usage: python search.py index PATH [--key=value ...] | python search.py query "TEXT" [-k N] '
         '[--key=value ...]; python search.py --help lists the settings')


def parse_argv(argv):
    """(command, its argument, the --key=value settings): `index PATH` or `query TEXT...` (the words
    of an unquoted query are joined); -k N means --k=N."""
    if argv and argv[0] in ('-h', '--help'):
        print(__doc__.strip() + '\n')
        return None, None, ['--help']
    if not argv or argv[0] not in ('index', 'query'):
        raise UserError(f"expected the command index or query, got {argv[0] if argv else 'nothing'!r}. {USAGE}")
    command, rest = argv[0], argv[1:]
    words = []
    while rest and not rest[0].startswith('-'):
        words.append(rest.pop(0))
    if not words or (command == 'index' and len(words) > 1):
        raise UserError(f"{command} needs one {'PATH' if command == 'index' else 'query text'}. {USAGE}")
    rest = ['--k' + a[2:] if a == '-k' or a.startswith('-k=') else a for a in rest]
    return command, ' '.join(words), rest


def source_files(root, exclude=()):
    """[(path relative to root, language)] of the files functions.py can read, in sorted order."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: not a directory (index takes a directory of source code)")
    try:
        os.listdir(root)
    except OSError as e:
        raise UserError(f"{root}: not readable ({e.strerror})") from None
    skip = lambda name: any(fnmatch.fnmatch(name, p) for p in exclude)
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith('.') and x not in SKIP_DIRS and not skip(x))
        for f in sorted(files):
            lang = language_of(f)
            if lang and not skip(f):
                out.append((os.path.relpath(os.path.join(d, f), root), lang))
    if not out:
        raise UserError(f"{root}: no source files ({' '.join(sorted(set(LANGUAGE_OF_EXT)))}) found")
    return out


def read_index(path):
    """(vectors (N, C) float32, meta) of an index file; UserError if it is absent or not one."""
    if not os.path.isfile(path):
        raise UserError(f"no index at {path}: run `python search.py index PATH` first (or pass --index=...)")
    try:
        with np.load(path, allow_pickle=False) as z:
            vectors, meta = z['vectors'], json.loads(str(z['meta']))
        if meta.get('format') != FORMAT or len(meta['functions']) != len(vectors):
            raise ValueError('not a search index')
    except Exception as e:
        raise UserError(f"{path}: not a readable search index ({type(e).__name__}: {e}); rebuild it with "
                        f"`python search.py index PATH`") from None
    return vectors, meta


def write_index(path, vectors, meta):
    with atomic_open(path, 'wb') as f:
        np.savez(f, vectors=vectors, meta=np.array(json.dumps(meta)))


def build(root, files, enc, old, max_len, batch_size):
    """The index of `files` under root: a file whose (language, sha256) the compatible old index
    holds keeps its rows; the others are read and embedded. Returns (vectors, functions
    [[file, line, name]], per-file records, stats)."""
    cache, stats = {}, {'unchanged': 0, 'embedded': 0, 'unreadable': 0, 'functions': 0, 'tokens': 0}
    if old is not None:
        vectors, meta = old
        first = 0
        for rel, rec in meta['files'].items():
            cache[(rec['language'], rec['sha256'])] = (vectors[first:first + rec['n']],
                                                       [f[1:] for f in meta['functions'][first:first + rec['n']]])
            first += rec['n']
    parts, records, todo = [], {}, []  # parts: per file, (rows, [line, name]) or None until embedded
    t0 = time.perf_counter()
    for rel, lang in files:
        try:
            with open(os.path.join(root, rel), 'rb') as f:
                raw = f.read()
        except OSError:
            stats['unreadable'] += 1
            continue
        key = (lang, hashlib.sha256(raw).hexdigest())
        if key in cache:
            stats['unchanged'] += 1
            parts.append(cache[key])
        else:
            fs = [f for f in functions(raw.decode('utf-8', errors='replace'), lang) if f['name']]
            todo.append((len(parts), lang, fs))
            parts.append(None)
            stats['embedded'] += 1
        records[rel] = {'language': lang, 'sha256': key[1], 'n': len(fs) if parts[-1] is None else len(parts[-1][1])}
    stats['extract_s'] = time.perf_counter() - t0
    # encode_texts in its two steps, to count the tokens embedded
    t0 = time.perf_counter()
    codes = [f['original_string'] for _, _, fs in todo for f in fs]
    langs = [lang for _, lang, fs in todo for _ in fs]
    seqs = text_inputs(enc.tok, codes, 'code', langs, max_len)
    z = encode_ids(enc.model, seqs, enc.exit, batch_size, enc.autocast, progress=True) if seqs else \
        np.zeros((0, enc.model.config.n_embd), np.float32)
    stats['embed_s'], stats['functions'], stats['tokens'] = time.perf_counter() - t0, len(seqs), sum(map(len, seqs))
    at = 0
    for i, _, fs in todo:
        parts[i] = (z[at:at + len(fs)], [[f['line'], f['qualname']] for f in fs])
        at += len(fs)
    names = [[rel] + fn for rel, (_, fns) in zip(records, parts) for fn in fns]
    vectors = np.concatenate([v for v, _ in parts]) if parts else z
    return vectors.astype(np.float32), names, records, stats


def shown_path(root, rel):
    """The path to print: relative to the current directory when it is below it, else absolute."""
    p = os.path.join(root, rel)
    r = os.path.relpath(p)
    return p if r.startswith('..') else r


if __name__ == '__main__':
    try:  # underscored: not settings of the configurator
        _command, _arg, _settings = parse_argv(sys.argv[1:])
    except UserError as e:
        fail(e)
    init_from = ''                   # model: checkpoint file, training out_dir or export.py dir; '' = index:
                                     # out/finetune-retrieval, query: the model the index was built with
    tokenizer = ''                   # '' = the one the model records
    exit = 0                         # index: 0 = the model's deepest exit; query: 0 = the index's exit
    index = 'search_index.npz'       # the index file
    k = 10                           # results per query
    exclude = ''                     # comma list of file / directory names (glob) to skip, e.g. test,site-packages
    max_len = 512                    # tokens per function, instruction and <cls> included (at most max_seq_len)
    batch_size = 32
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    dtype = 'float32'                # or bfloat16 (autocast)
    threads = 0                      # CPU threads for torch; 0 = torch's default
    # -------------------------------------------------------------------------
    sys.argv = [sys.argv[0]] + _settings  # the configurator reads what follows the command and its argument
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())  # -> config
    # -------------------------------------------------------------------------
    if threads > 0:
        torch.set_num_threads(threads)
    system = f"{device} {dtype}" + (f", {torch.get_num_threads()} threads" if device == 'cpu' else '')

    if _command == 'index':
        # what to index, the model, and the old index whose unchanged files need no new embedding
        try:
            files = source_files(_arg, [p for p in exclude.split(',') if p])
            t0 = time.perf_counter()
            enc = load_encoder(init_from or 'out/finetune-retrieval', exit, tokenizer, device, dtype)
            load_s = time.perf_counter() - t0
        except UserError as e:
            fail(e)
        L = min(max_len, enc.model.config.max_seq_len)
        old, why = None, ''
        if os.path.exists(index):
            try:
                old = read_index(index)
                m = old[1]
                if (m['model']['fingerprint'], m['exit'], m['max_len'], m['tokenizer'].get('bpe_sha256')) != \
                        (enc.fingerprint, enc.exit, L, enc.tok.meta()['bpe_sha256']):
                    old, why = None, f"{index} was built by another model, exit or max_len: every file is embedded"
            except UserError as e:
                old, why = None, f"{e}: every file is embedded"
        if why:
            print(f"note: {why}")
        vectors, names, records, st = build(_arg, files, enc, old, L, batch_size)
        if not names:
            fail(f"{_arg}: {len(files)} source files but no named function in them")
        removed = len(set(old[1]['files']) - set(records)) if old else 0
        meta = {'format': FORMAT, 'version': VERSION, 'root': os.path.abspath(_arg), 'exit': enc.exit, 'max_len': L,
                'model': {'init_from': os.path.abspath(init_from or 'out/finetune-retrieval'), 'where': enc.where,
                          'fingerprint': enc.fingerprint},
                'tokenizer': enc.tok.meta(), 'files': records, 'functions': names}
        try:
            write_index(index, vectors, meta)
        except OSError as e:
            fail(f"{index}: cannot write the index ({e.strerror or e})")
        print(f"index {_arg} at exit {enc.exit} ({enc.where}, {system}): {len(records):,} files "
              f"({st['unchanged']:,} unchanged, {st['embedded']:,} new or changed, {removed:,} removed"
              + (f", {st['unreadable']} unreadable" if st['unreadable'] else '') + f"), {len(names):,} functions")
        rate = f", {st['functions'] / st['embed_s']:,.1f} functions/s" if st['functions'] else ''
        print(f"time at exit {enc.exit}: model load {load_s:.1f} s, extraction {st['extract_s']:.1f} s, "
              f"embedding {st['functions']:,} functions ({st['tokens']:,} tokens) {st['embed_s']:.1f} s{rate}")
        print(f"wrote {index} ({os.path.getsize(index) / 1e6:.1f} MB)")

    else:
        # the index, then the model it was built with: another exit or another model is an error
        try:
            vectors, meta = read_index(index)
            if exit and exit != meta['exit']:
                raise UserError(f"{index} was built at exit {meta['exit']}, this query asks exit {exit}: query with "
                                f"--exit={meta['exit']}, or index at exit {exit} (--index=another file keeps both)")
            t0 = time.perf_counter()
            enc = load_encoder(init_from or meta['model']['init_from'], meta['exit'], tokenizer, device, dtype)
            load_s = time.perf_counter() - t0
            if enc.fingerprint != meta['model']['fingerprint']:
                raise UserError(f"{index} was built by another model ({meta['model']['where']}) than {enc.where} "
                                f"(weights or settings differ at exit {meta['exit']}): query with the model it was "
                                f"built with, or re-index with this one")
            check_tokenizer(meta['tokenizer'], enc.tok, index)
        except (UserError, ValueError) as e:
            fail(e)
        times = []
        for _ in range(2):  # the first call pays for the kernels' start; the second is a warm query's cost
            t0 = time.perf_counter()
            q = enc.encode(_arg, kind='query', max_len=meta['max_len'])  # (C,)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scores = vectors @ q                                              # (N,) cosine similarities
        top = np.argsort(-scores, kind='stable')[:max(k, 0)]
        search_s = time.perf_counter() - t0
        print(f"query at exit {meta['exit']} ({enc.where}, {system}): model load {load_s:.1f} s, "
              f"embedding {1e3 * times[0]:.1f} ms (warm {1e3 * times[1]:.1f} ms), search {1e3 * search_s:.1f} ms over {len(vectors):,} functions")
        for i in top:
            rel, line, name = meta['functions'][i]
            print(f"{shown_path(meta['root'], rel)}:{line} {name} {scores[i]:.3f}")
