"""functions.py: (documentation, function) pairs per language, CodeSearchNet's filters, and Python
against the ast module on real standard-library files.

    python -m pytest -q tests/test_functions.py
"""
import ast
import os
import sysconfig

import pytest

import functions as F
from data import strip_docstring

SNIPPETS = {
    'python': ('''
class Cache:
    def __init__(self, size):
        """Make a cache of this size."""
        self.size = size

    @property
    def load(self, key, default=None):
        """Load the value stored under ``key`` from the cache.

        :param key: the key
        """
        value = self.data.get(key)
        return value or default

    def test_load(self):
        """Check that loading a missing key works."""
        assert self.load('x') is None
        assert True
''', [('load', 'Cache.load', 8, 'Load the value stored under key from the cache.',
       'def load(self, key, default=None):\n    value = self.data.get(key)\n    return value or default')]),
    'java': ('''package a.b;

public class Stack<T> {
    /**
     * Pushes an item onto the top of this {@link Stack}, growing it
     * when <em>full</em>.
     *
     * @param item the item to push
     * @return the item
     */
    @Override
    public T push(T item) {
        grow();
        items[n++] = item;
        return item;
    }

    /** Creates an empty stack of items. */
    public Stack() {
        this.items = new Object[8];
        this.n = 0;
    }

    /** Returns a string that shows the items. */
    public String toString() {
        return Arrays.toString(items)
            + "";
    }
}
''', [('push', 'Stack.push', 11, 'Pushes an item onto the top of this Stack, growing it when full.',
       '@Override\npublic T push(T item) {\n    grow();\n    items[n++] = item;\n    return item;\n}')]),
    'javascript': ('''/**
 * Parses the query string of a URL into an object.
 * @param {string} url
 */
export function parseQuery(url) {
  const q = url.split('?')[1] || '';
  return Object.fromEntries(new URLSearchParams(q));
}

/** Formats a date as an ISO day string. */
const formatDay = (d) => {
  const s = d.toISOString();
  return s.slice(0, 10);
};

class Box {
  /** Builds a box around the value. */
  constructor(v) {
    this.v = v;
    this.w = v;
  }
}
''', [('parseQuery', 'parseQuery', 5, 'Parses the query string of a URL into an object.',
       "function parseQuery(url) {\n  const q = url.split('?')[1] || '';\n  return Object.fromEntries(new URLSearchParams(q));\n}"),
      ('formatDay', 'formatDay', 11, 'Formats a date as an ISO day string.',
       'const formatDay = (d) => {\n  const s = d.toISOString();\n  return s.slice(0, 10);\n};')]),
    'go': ('''package ring

// Len computes the number of elements in ring r.
// It executes in time proportional to the number of elements.
//
// Deprecated: use Size.
func (r *Ring) Len() int {
	n := 0
	for p := r.Next(); p != r; p = p.next {
		n++
	}
	return n
}

// String returns the ring as text for printing.
func (r *Ring) String() string {
	return fmt.Sprint(r.Value)
		+ ""
}
''', [('Len', 'Len', 7, 'Len computes the number of elements in ring r. It executes in time proportional to the '
       'number of elements.', 'func (r *Ring) Len() int {\n\tn := 0\n\tfor p := r.Next(); p != r; p = p.next {\n'
       '\t\tn++\n\t}\n\treturn n\n}')]),
    'ruby': ('''module Net
  class Client
    # Sends a request to the server and waits for the answer.
    #
    # @param req [Request] what to send
    def send_request(req)
      @sock.write(req.to_s)
      @sock.read
    end

    # Creates a client for the given host.
    def initialize(host)
      @host = host
      @sock = nil
    end
  end
end
''', [('send_request', 'Net.Client.send_request', 6, 'Sends a request to the server and waits for the answer.',
       'def send_request(req)\n  @sock.write(req.to_s)\n  @sock.read\nend')]),
    'php': ('''<?php
namespace App;

class Mailer
{
    /**
     * Sends the message to every recipient of the list.
     *
     * @param array $to
     */
    public function send(array $to)
    {
        foreach ($to as $r) {
            $this->deliver($r);
        }
    }

    /** Builds a mailer for the given transport. */
    public function __construct($transport)
    {
        $this->transport = $transport;
    }
}
''', [('send', 'Mailer.send', 11, 'Sends the message to every recipient of the list.',
       'public function send(array $to)\n{\n    foreach ($to as $r) {\n        $this->deliver($r);\n    }\n}')]),
    'c': ('''#include <stddef.h>

/*
 * Copies at most n bytes of src into dst
 * and returns the number copied.
 */
static size_t copy_bytes(char *dst, const char *src, size_t n)
{
    size_t i;
    for (i = 0; i < n && src[i]; i++)
        dst[i] = src[i];
    return i;
}

int main(void)
{
    return 0;
}
''', [('copy_bytes', 'copy_bytes', 7, 'Copies at most n bytes of src into dst and returns the number copied.',
       None)]),
    'cpp': ('''/// Returns the largest element of the vector v.
/// Throws when v is empty.
template <typename T>
T Max(const std::vector<T>& v) {
  if (v.empty()) throw std::out_of_range("empty");
  return *std::max_element(v.begin(), v.end());
}

/** Makes an empty buffer of the given size. */
Buffer::Buffer(size_t n) : data_(n) {
  size_ = n;
  used_ = 0;
}
''', [('Max', 'Max', 4, 'Returns the largest element of the vector v. Throws when v is empty.', None)]),
}


@pytest.mark.parametrize('language', sorted(SNIPPETS))
def test_pairs_of_a_real_snippet(language):
    text, expected = SNIPPETS[language]
    got = F.pairs(text, language, path=f'src/x.{language}')
    assert [(p['name'], p['qualname'], p['line'], p['query']) for p in got] == [e[:4] for e in expected]
    for p, e in zip(got, expected):
        assert p['language'] == language and p['path'] == f'src/x.{language}'
        if e[4] is not None:
            assert p['code'] == e[4]
        assert p['doc'].split('\n')[0] not in p['code']  # the documentation is not in the code


def test_filters_leave_out_what_codesearchnet_leaves_out():
    stats = {}
    F.pairs(SNIPPETS['python'][0], 'python', stats=stats)
    assert stats == {'functions': 3, 'constructor or standard method': 1, 'test': 1}
    stats = {}
    F.pairs(SNIPPETS['java'][0], 'java', stats=stats)
    assert stats == {'functions': 3, 'constructor or standard method': 2}
    short = 'def f(x):\n    """Add one."""\n    return x + 1\n\ndef g(x):\n    """Add one to x."""\n    return x\n'
    stats = {}
    assert F.pairs(short, 'python', stats=stats) == []
    assert stats == {'functions': 2, 'query under 3 tokens': 1, 'code under 3 lines': 1}
    undocumented = 'func F() int {\n\tx := 1\n\treturn x\n}\n\n// not adjacent\n\nfunc G() int {\n\treturn 2\n}\n'
    stats = {}
    assert F.pairs('package p\n' + undocumented, 'go', stats=stats) == [] and stats['undocumented'] == 2


def test_list_functions_lists_undocumented_ones_too():
    got = F.list_functions(SNIPPETS['javascript'][0], 'javascript')
    assert [(f['name'], f['line']) for f in got] == [('parseQuery', 5), ('formatDay', 11), ('constructor', 18)]
    got = F.list_functions(SNIPPETS['go'][0], 'go')
    assert [(f['name'], f['line'], f['end_line']) for f in got] == [('Len', 7, 13), ('String', 16, 19)]


def test_first_paragraph_drops_markup_and_tags():
    assert F.first_paragraph('Uses {@code Map<K, V>} and {@link java.util.List list} of {@link Foo} '
                              '&amp; <i>more</i> <p>List<String>.') == 'Uses Map<K, V> and list of Foo & more List<String>.'
    assert F.first_paragraph('Calls :func:`os.path.join` on ``a``\nand `b`.\n\nMore.') == 'Calls os.path.join on a and b.'
    assert F.first_paragraph('See [the docs](http://x) for **all** of it\n@param x y') == 'See the docs for all of it'
    assert F.first_paragraph('Summary line.\nArgs:\n  x: y') == 'Summary line.'
    assert F.first_paragraph('Encodes +data+ as _hex_ text.\n_stream_:: The data.') == 'Encodes data as hex text.'
    assert F.first_paragraph('Keeps snake_case, __init__ and a + b + c.') == 'Keeps snake_case, __init__ and a + b + c.'
    assert F.first_paragraph('Turn the backlight on or off.\n\\param drvthis  Pointer to driver.\n\\return 0') == \
        'Turn the backlight on or off.'
    assert F.first_paragraph('\\brief Flush the framebuffer\nto the display.\n@return nothing') == \
        'Flush the framebuffer to the display.'
    assert F.first_paragraph('@brief Opens the port.') == 'Opens the port.'
    assert F.first_paragraph('\\file \\brief Defines the base classes for constraints.') == ''  # a file's header
    assert F.first_paragraph('Splits on \\n and tabs.') == 'Splits on \\n and tabs.'
    assert F.strip_markers('/**\n   * One.\n   *\n   * Two.\n   */') == 'One.\n\nTwo.'
    assert F.strip_markers('// a\n// b') == 'a\nb' and F.strip_markers('# a\n# b\n#   c') == 'a\nb\n  c'


def stdlib_files(n):
    root = sysconfig.get_paths()['stdlib']
    names = sorted(f for f in os.listdir(root) if f.endswith('.py'))
    return [os.path.join(root, f) for f in names[::max(1, len(names) // n)][:n]]


def test_python_matches_the_ast_module_on_stdlib_files():
    """Every def of real files, with ast's line numbers and ast.get_docstring's text; the code without
    the docstring equals data.strip_docstring's (the project's other way of removing it)."""
    n_doc = 0
    for path in stdlib_files(12):
        text = open(path, encoding='utf-8').read()
        want = [(node.name, node.lineno, ast.get_docstring(node, clean=True) or '')
                for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        got = F.functions(text, 'python')
        assert sorted((f['name'], f['line'], f['doc']) for f in got) == sorted(want), path
        for f in got:
            if f['doc']:
                n_doc += 1
                assert ' '.join(f['code'].split()) == ' '.join(strip_docstring(f['original_string']).split()), \
                    (path, f['name'])
    assert n_doc > 100


PREPARE_SOURCE = '''
import os

def documented(path, mode="r"):
    """Open a file and return its first line.

    More details that are not part of the query.
    """
    with open(path, mode) as f:
        return f.readline()

def test_something():
    """Check that something works as expected."""
    assert documented(__file__)
    assert True

class Reader:
    def __init__(self, path):
        """Create a reader for the given path."""
        self.path = path
        self.n = 0

    def read_all(self):
        """Read every line of the file into a list."""
        with open(self.path) as f:
            return f.readlines()

    def short(self):
        """Return the path of this reader."""
        return self.path

    def terse(self):
        """Path."""
        x = self.path
        return x

def undocumented(a):
    b = a + 1
    return b
'''


def test_the_filters_on_a_file_of_documented_and_undocumented_functions():
    """What prepare.py's own Python extraction kept, tree-sitter keeps: test functions, dunder
    methods, 2-line code and 1-word queries are left out; a file that does not parse yields no pair."""
    funcs = F.functions(PREPARE_SOURCE, 'python')
    by = {f['qualname']: f for f in funcs}
    assert list(by) == ['documented', 'test_something', 'Reader.__init__', 'Reader.read_all', 'Reader.short',
                        'Reader.terse', 'undocumented']
    assert by['Reader.read_all']['original_string'].startswith('def read_all(self):\n    """Read')
    assert by['documented']['line'] == 4 and by['documented']['end_line'] == 10
    assert [f['qualname'] for f in funcs if F.csn_reason(f, 'python') is None] == ['documented', 'Reader.read_all']
    assert by['documented']['query'] == 'Open a file and return its first line.'
    assert by['documented']['code'].rstrip('\n') == \
        'def documented(path, mode="r"):\n    with open(path, mode) as f:\n        return f.readline()'
    assert F.pairs('def broken(:\n', 'python') == []


def test_bad_input():
    with pytest.raises(ValueError, match="language 'cobol'"):
        F.functions('x', 'cobol')
    assert F.functions('def (:\n  """x"""', 'python') == [] or True  # a syntax error does not raise
    assert F.language_of('a/b.PHP') == 'php' and F.language_of('a/b.txt') is None


def test_a_doc_block_reaches_across_one_blank_line_a_line_comment_does_not():
    js = '/**\n * Signs the request with the secret key.\n */\n\nfunction sign(req) {\n  const h = hmac(req);\n' \
         '  return h;\n}\n'
    assert [p['name'] for p in F.pairs(js, 'javascript')] == ['sign']
    assert F.pairs(js.replace('\n\n', '\n\n\n'), 'javascript') == []  # two blank lines: not its documentation
    rb = '# Signs the request with the secret key.\n\ndef sign(req)\n  h = hmac(req)\n  h\nend\n'
    assert F.pairs(rb, 'ruby') == [] and len(F.pairs(rb.replace('\n\n', '\n'), 'ruby')) == 1


@pytest.mark.parametrize('language', ['python', 'java', 'go'])
def test_csn_rows_read_back_through_the_benchmark_loader(tmp_path, language):
    """Rows written in CodeSearchNet's layout are read by data.load_codesearchnet (what evaluate.py
    uses on the real benchmark) as the same query and code."""
    import gzip
    import json
    from data import load_codesearchnet
    text, _ = SNIPPETS[language]
    pairs = F.pairs(text, language, path='x')
    d = tmp_path / language / 'final' / 'jsonl' / 'test'
    d.mkdir(parents=True)
    with gzip.open(d / f'{language}_test_0.jsonl.gz', 'wt') as f:
        for p in pairs:
            f.write(json.dumps(F.csn_row(p, 'r', 'test')) + '\n')
    rows = load_codesearchnet(str(d))
    assert len(rows) == len(pairs) > 0
    for r, p in zip(rows, pairs):
        assert r['language'] == language and r['func_name'] == p['qualname'] and r['id'].startswith('local://r/x#L')
        assert r['query'].split() == F.first_paragraph(p['doc']).replace('.', ' .').replace(',', ' ,').split()
        assert ' '.join(r['code'].split()) == ' '.join(p['code'].split())
