"""
Tokenizer tests (CPU, no network):  python -m pytest tests/test_tokenizer.py -q

The StarCoder-2 style loader is checked against HF `tokenizers` as the independent reference:
a small byte-level BPE is trained here on real stdlib sources, saved as vocab.json + merges.txt,
and both implementations must give identical ids on other real files and on tricky text; and on
real files of every language of the corpus (the Debian corpus under data/debian when it is there,
else what this machine has; Python always, from the stdlib).
"""
import json
import os
import sysconfig

import pytest

from tokenizer import Tokenizer, check_tokenizer, get_tokenizer

STDLIB = sysconfig.get_paths()['stdlib']
TRAIN_FILES = ['json/decoder.py', 'textwrap.py', 'argparse.py', 'ast.py', 'heapq.py']
TEST_FILES = ['json/encoder.py', 'random.py', 'tokenize.py', 'string.py', 'bisect.py']
TRICKY = [
    "",
    "x = 1234567 + 3.14159e-10 # numbers 0x1F 1_000_000\n",
    "def f():\r\n\treturn  'héllo wörld' \r\n\r\n",
    "    \n\n\n        \t\t  trailing   ",
    "日本語のテキスト, emoji 🎉🚀, ĳ ﬁ, Ω≈ç√∫, ½ ² ٣ ۴",
    "it's we'll they've I'm you'd 'S 'LL",
    "a  1  b\t2\n 3 x9y 10z",
    "<|endoftext|> <sep> <cls> <mask> <pad>",
    "\x00\x01 control \u200b zero-width \ufeff bom",
]


def read(rel):
    with open(os.path.join(STDLIB, rel), encoding='utf-8') as f:
        return f.read()


@pytest.fixture(scope='module')
def cl100k():
    return get_tokenizer('cl100k_base')


def test_cl100k_special_ids(cl100k):
    assert (cl100k.sep_id, cl100k.cls_id, cl100k.mask_id, cl100k.pad_id) == (100277, 100278, 100279, 100280)
    assert cl100k.n_vocab == 100281
    assert cl100k.enc.max_token_value == cl100k.n_vocab - 1
    assert {100257, 100277, 100278, 100279, 100280} <= cl100k.special_ids
    assert cl100k.decode([cl100k.sep_id, cl100k.cls_id, cl100k.mask_id, cl100k.pad_id]) == '<sep><cls><mask><pad>'


def test_cl100k_known_ids(cl100k):
    # hand-checkable: cl100k's ids for "hello world" and for a code line
    assert cl100k.encode("hello world") == [15339, 1917]
    ids = cl100k.encode("def f():")
    assert [cl100k.enc.decode_single_token_bytes(i) for i in ids] == [b'def', b' f', b'():']


@pytest.mark.parametrize('rel', TEST_FILES)
def test_roundtrip_real_source(cl100k, rel):
    text = read(rel)
    ids = cl100k.encode(text)
    assert cl100k.decode(ids) == text
    assert max(ids) < 100257 and not set(ids) & cl100k.special_ids


@pytest.mark.parametrize('text', ["<|endoftext|>", "a <sep> b <cls>", "<mask><pad>"])
def test_special_strings_are_plain_text(cl100k, text):
    ids = cl100k.encode(text)
    assert not set(ids) & cl100k.special_ids
    assert cl100k.decode(ids) == text
    assert cl100k.encode_batch([text, text]) == [ids, ids]


def test_snippet_and_pair_format(cl100k):
    a, b = "def add(a, b):\n    return a + b\n", "int add(int a, int b) { return a + b; }"
    ia, ib = cl100k.encode(a), cl100k.encode(b)
    assert cl100k.snippet(a) == [cl100k.sep_id] + ia + [cl100k.cls_id]
    assert cl100k.pair(a, b) == [cl100k.sep_id] + ia + [cl100k.sep_id] + ib + [cl100k.cls_id]
    s = cl100k.snippet(a, max_len=5)
    assert len(s) == 5 and s[0] == cl100k.sep_id and s[-1] == cl100k.cls_id and s[1:4] == ia[:3]


@pytest.mark.parametrize('la,lb,max_len', [(3, 50, 20), (50, 3, 20), (50, 60, 20), (50, 60, 21), (5, 5, 100)])
def test_pair_truncation_shares_budget(cl100k, la, lb, max_len):
    a, b = ' a' * la, ' b' * lb  # ' a' is one token
    ids = cl100k.pair(a, b, max_len=max_len)
    assert len(ids) == min(max_len, la + lb + 3)
    assert ids[0] == cl100k.sep_id and ids[-1] == cl100k.cls_id and ids.count(cl100k.sep_id) == 2
    k = ids.index(cl100k.sep_id, 1)
    na, nb = k - 1, len(ids) - k - 2
    budget = max_len - 3
    if la + lb > budget:  # the short side is kept whole when it fits in half, else both get half
        half = budget // 2
        assert (na, nb) == ((la, budget - la) if la <= half else (budget - lb, lb) if lb <= budget - half
                            else (half, budget - half))


def test_check_tokenizer(cl100k, tmp_path):
    meta = cl100k.meta()
    check_tokenizer(json.loads(json.dumps(meta)), cl100k, 'data/icc/manifest.json')  # same: no error
    other = dict(meta, sep_id=49152)
    with pytest.raises(ValueError, match=r"data/icc/manifest.json: .*sep_id is 49152 there but 100277 here"):
        check_tokenizer(other, cl100k, 'data/icc/manifest.json')
    with pytest.raises(ValueError, match="bpe_sha256"):
        check_tokenizer(dict(meta, bpe_sha256='0' * 64), meta, 'x')
    with pytest.raises(ValueError, match="no tokenizer record"):
        check_tokenizer(None, meta, 'x')


# ----------------------------------------------------------------------------- StarCoder-2 style BPE

def train_hf_bpe(out_dir, digits=False, vocab_size=1200):
    """Train a byte-level BPE with HF tokenizers on real stdlib sources; save its files."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    hf = HFTokenizer(models.BPE())
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl]) if digits else bl
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<|endoftext|>', '<fim_prefix>'],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator([read(p) for p in TRAIN_FILES], trainer=trainer)
    os.makedirs(out_dir, exist_ok=True)
    hf.model.save(str(out_dir))  # vocab.json + merges.txt
    if digits:
        hf.save(os.path.join(out_dir, 'tokenizer.json'))
    return hf


@pytest.fixture(scope='module', params=[False, True], ids=['bytelevel', 'digits+bytelevel'])
def bpe_pair(request, tmp_path_factory):
    d = tmp_path_factory.mktemp('bpe')
    hf = train_hf_bpe(d, digits=request.param)
    return hf, get_tokenizer(str(d)), d


@pytest.mark.parametrize('text', [pytest.param(read(p), id=p) for p in TEST_FILES] +
                         [pytest.param(t, id=f'tricky{i}') for i, t in enumerate(TRICKY[:-2])] + [TRICKY[-1]])
def test_bpe_matches_hf_tokenizers(bpe_pair, text):
    hf, tok, _ = bpe_pair
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text)) == text


def test_bpe_special_ids(bpe_pair):
    hf, tok, d = bpe_pair
    n = hf.get_vocab_size()
    assert hf.token_to_id('<|endoftext|>') == 0
    assert (tok.sep_id, tok.cls_id, tok.mask_id, tok.pad_id, tok.n_vocab) == (n, n + 1, n + 2, 0, n + 4)
    assert tok.snippet('x = 1')[0] == n and tok.snippet('x = 1')[-1] == n + 1
    assert {0, 1, n, n + 1, n + 2} <= tok.special_ids  # <|endoftext|>, <fim_prefix>, ours
    assert tok.meta()['name'] == 'starcoder2' and tok.meta()['source'] == str(d)
    assert tok.encode('<|endoftext|>') != [0]


def test_bpe_added_tokens_from_tokenizer_json(tmp_path):
    """Real MoSE files list <sep>/<cls>/<mask> as added tokens: their ids are taken from there."""
    hf = train_hf_bpe(tmp_path, digits=True)
    n = hf.get_vocab_size()
    tj = json.load(open(tmp_path / 'tokenizer.json'))
    tj['added_tokens'] += [{'id': n + i, 'content': t, 'special': True} for i, t in
                           enumerate(['<mask>', '<sep>', '<cls>'])]
    json.dump(tj, open(tmp_path / 'tokenizer.json', 'w'))
    tok = get_tokenizer(str(tmp_path))
    assert (tok.mask_id, tok.sep_id, tok.cls_id, tok.n_vocab) == (n, n + 1, n + 2, n + 4)


def test_bpe_inconsistent_merges_is_an_error(tmp_path):
    train_hf_bpe(tmp_path)
    lines = open(tmp_path / 'merges.txt', encoding='utf-8').read().splitlines()
    i = next(i for i, l in enumerate(lines) if not l.startswith('#'))
    lines[i], lines[i + 5] = lines[i + 5], lines[i]  # swap two merges: order now disagrees with ids
    open(tmp_path / 'merges.txt', 'w', encoding='utf-8').write('\n'.join(lines) + '\n')
    with pytest.raises(ValueError, match=r"merges.txt:\d+: .*inconsistent with the merge order"):
        get_tokenizer(str(tmp_path))


def test_bad_tokenizer_names(tmp_path):
    with pytest.raises(ValueError, match="expected 'cl100k_base' or a directory"):
        get_tokenizer('gpt-7')
    with pytest.raises(FileNotFoundError, match="vocab.json: not found"):
        get_tokenizer(str(tmp_path))
    assert isinstance(get_tokenizer(), Tokenizer)


def test_bpe_unsupported_tokenizer_json(tmp_path):
    train_hf_bpe(tmp_path, digits=True)
    tj = json.load(open(tmp_path / 'tokenizer.json'))
    tj['normalizer'] = {'type': 'NFKC'}
    json.dump(tj, open(tmp_path / 'tokenizer.json', 'w'))
    with pytest.raises(ValueError, match="tokenizer.json: a normalizer or add_prefix_space=true is not supported"):
        get_tokenizer(str(tmp_path))


def test_train_bpe_is_the_starcoder2_path(tmp_path):
    """tokenizer.train_bpe (what prepare.py --bpe_vocab runs) writes files that the BPE-directory
    loader reads as the HF tokenizer itself encodes: the same ids on unseen real files."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizer import train_bpe
    tok = train_bpe((read(p) for p in TRAIN_FILES), 1000, str(tmp_path))
    hf = HFTokenizer.from_file(str(tmp_path / 'tokenizer.json'))
    assert sorted(os.listdir(tmp_path)) == ['merges.txt', 'tokenizer.json', 'vocab.json']  # no temp files left
    assert hf.get_vocab_size() == 1000 and tok.n_vocab == 1004
    assert (tok.pad_id, tok.sep_id, tok.cls_id, tok.mask_id) == (0, 1000, 1001, 1002)
    for p in TEST_FILES:
        text = read(p)
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids
        assert tok.decode(tok.encode(text)) == text
    assert [tok.decode([i]) for i in tok.encode('x = 2024')][-4:] == ['2', '0', '2', '4']  # digits one by one
    with pytest.raises(ValueError, match='vocab_size'):
        train_bpe(['x'], 100, str(tmp_path / 'small'))


# ----------------------------------------------------------------------------- real files of every corpus language

DEBIAN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', 'debian')
# where a machine without the Debian corpus may have real files of a language (bounded walks)
MACHINE_ROOTS = {'c': [sysconfig.get_paths()['include'], '/usr/include'], 'javascript': ['/usr/share/javascript'],
                 'go': ['/usr/lib/go/src', '/usr/local/go/src'], 'ruby': ['/usr/lib/ruby'], 'php': ['/usr/share/php'],
                 'java': ['/usr/share/java']}


def _files_under(roots, exts, n, max_visits=3000):
    """Up to n real files (2-100 kB, UTF-8, no NUL) with one of exts under roots, in sorted walk
    order, at most one a directory, looking at no more than max_visits directories per root."""
    out = []
    for root in roots:
        visits = 0
        for d, dirs, names in os.walk(root):
            dirs.sort()
            visits += 1
            for name in sorted(names):
                p = os.path.join(d, name)
                if name.endswith(exts) and os.path.isfile(p) and 2000 <= os.path.getsize(p) <= 100_000:
                    raw = open(p, 'rb').read()
                    try:
                        text = raw.decode('utf-8')
                    except UnicodeDecodeError:
                        continue
                    if '\0' not in text:
                        out.append((p, text))
                        break
            if len(out) >= n:
                return out
            if visits >= max_visits:
                break
    return out


def real_files(language, n=6):
    """n real files of a corpus language: this Python's stdlib for Python; else the Debian corpus
    (data/debian, one file per package) when it is there, else well-known places of this machine."""
    from debian import LANGUAGE_EXTS
    if language == 'python':
        return _files_under([STDLIB], ('.py',), n)
    try:
        with open(os.path.join(DEBIAN, 'manifest.json')) as f:
            packages = sorted(p for p, r in json.load(f)['packages'].items() if r['language'] == language)
    except (OSError, ValueError, KeyError):
        packages = []
    out = []
    for p in packages:
        out += _files_under([os.path.join(DEBIAN, 'src', p)], LANGUAGE_EXTS[language], 1, max_visits=200)
        if len(out) >= n:
            return out
    return out + _files_under(MACHINE_ROOTS.get(language, []), LANGUAGE_EXTS[language], n - len(out))


CORPUS_LANGUAGES = ('python', 'java', 'javascript', 'go', 'ruby', 'php', 'c')  # debian.LANGUAGES


@pytest.fixture(scope='module')
def corpus_files():
    return {lang: real_files(lang) for lang in CORPUS_LANGUAGES}


@pytest.fixture(scope='module', params=['train_bpe', 'bytelevel'])
def corpus_bpe(request, corpus_files, tmp_path_factory):
    """A BPE trained on the first half of the files of every language found, loaded through the
    tiktoken path, and HF's own tokenizer of it: prepare.py's (train_bpe: StarCoder-2's
    pre-tokenisation, digits one by one) and a plain byte-level one (GPT-2's regex alone)."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizer import train_bpe
    d = tmp_path_factory.mktemp('corpus_bpe')
    train = [t for files in corpus_files.values() for _, t in files[:len(files) // 2]]
    if request.param == 'train_bpe':
        return train_bpe(iter(train), 3000, str(d)), HFTokenizer.from_file(str(d / 'tokenizer.json'))
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(train, trainers.BpeTrainer(vocab_size=3000, special_tokens=['<|endoftext|>'],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    hf.model.save(str(d))  # vocab.json + merges.txt only: the StarCoder-2 directory path
    return get_tokenizer(str(d)), hf


@pytest.mark.parametrize('language', CORPUS_LANGUAGES)
def test_tiktoken_equals_hf_tokenizers_on_real_files(corpus_files, corpus_bpe, language):
    """The ids prepare.py writes (tiktoken, from vocab.json + merges.txt) are HF tokenizers' ids on
    real files of every language of the corpus, none of which the BPE was trained on."""
    files = corpus_files[language][len(corpus_files[language]) // 2:]
    if not files:
        pytest.skip(f"no real {language} files here (no data/debian corpus, none in {MACHINE_ROOTS.get(language)})")
    tok, hf = corpus_bpe
    for path, text in files:
        ids = tok.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False).ids, path
        assert tok.decode(ids) == text and len(ids) > 100
