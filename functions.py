"""
How functions, and (documentation, function) pairs, are read out of a source file, per language,
with tree-sitter (the parser CodeSearchNet used). The documentation is a Python docstring, the
Javadoc / PHPDoc / JSDoc `/** */` block before a method, the `//` lines before a Go `func`, the `#`
lines before a Ruby `def`, a `/* */` block or `//` lines before a C / C++ function.

    fs = list_functions(text, 'go')                  # every function: name, qualname, line, end_line
    rows = pairs(text, 'java', path='src/A.java')    # CodeSearchNet-style pairs, its filters applied

A pair's query is the first paragraph of the documentation without comment markers, tags or
markup; its code is the function without the documentation. CodeSearchNet's filters (Husain et
al. 2019, 3.1): code of 3+ lines, a query of 3+ tokens, no test functions, no constructors or
standard methods (__init__, toString, ...). Deduplication and splits are the caller's.
"""
import ast
import bisect
import html
import inspect
import os
import re

LANGUAGE_OF_EXT = {'.py': 'python', '.java': 'java', '.js': 'javascript', '.mjs': 'javascript', '.cjs': 'javascript',
                   '.go': 'go', '.rb': 'ruby', '.php': 'php', '.c': 'c', '.h': 'c', '.cc': 'cpp', '.cpp': 'cpp',
                   '.cxx': 'cpp', '.hpp': 'cpp', '.hh': 'cpp'}
# tree-sitter node types of a function, per language
FUNCTION_NODES = {
    'python': {'function_definition'},
    'java': {'method_declaration', 'constructor_declaration'},
    'javascript': {'function_declaration', 'generator_function_declaration', 'method_definition',
                   'function_expression', 'arrow_function', 'function'},
    'go': {'function_declaration', 'method_declaration'},
    'ruby': {'method', 'singleton_method'},
    'php': {'function_definition', 'method_declaration'},
    'c': {'function_definition'}, 'cpp': {'function_definition'},
}
CLASS_NODES = {'class_definition', 'class_declaration', 'interface_declaration', 'enum_declaration', 'class',
               'module', 'trait_declaration', 'class_specifier', 'struct_specifier', 'record_declaration'}
COMMENT_NODES = {'comment', 'block_comment', 'line_comment'}
# standard methods: CodeSearchNet leaves out constructors and "standard extension methods"
STANDARD = {
    'python': re.compile(r'__\w+__$'),
    'java': re.compile(r'(toString|equals|hashCode|clone|finalize|compareTo|main)$'),
    'javascript': re.compile(r'(constructor|toString|valueOf|toJSON)$'),
    'go': re.compile(r'(String|Error|init|main)$'),
    'ruby': re.compile(r'(initialize|to_s|to_str|inspect|hash|eql\?|==|<=>|===|method_missing|respond_to_missing\?)$'),
    'php': re.compile(r'__\w+$'),
    'c': re.compile(r'main$'), 'cpp': re.compile(r'(main|operator\W.*|~.*)$'),
}
_PARSERS, _QUERIES = {}, {}


def language_of(path):
    """The language of a file from its extension, or None."""
    return LANGUAGE_OF_EXT.get(os.path.splitext(path)[1].lower())


def parser(language):
    """One tree-sitter parser per language and process (the grammars are the tree-sitter-* wheels)."""
    if language not in _PARSERS:
        if language not in FUNCTION_NODES:
            raise ValueError(f"language {language!r}: expected one of {', '.join(FUNCTION_NODES)}")
        import tree_sitter
        mod = __import__(f"tree_sitter_{language}")
        lang = mod.language_php() if language == 'php' else mod.language()
        _PARSERS[language] = tree_sitter.Parser(tree_sitter.Language(lang))
    return _PARSERS[language]


# ----------------------------------------------------------------------------- walking the tree

def _name(node, src, language):
    """A function node's name ('' for an anonymous function)."""
    if language in ('c', 'cpp'):
        d = node.child_by_field_name('declarator')
        while d is not None and d.type not in ('identifier', 'field_identifier', 'qualified_identifier',
                                               'destructor_name', 'operator_name'):
            d = d.child_by_field_name('declarator')
        if d is None:
            return ''
        return _text(d, src).split('::')[-1].strip()
    n = node.child_by_field_name('name')
    if n is not None:
        return _text(n, src)
    parent = node.parent  # a JavaScript function as a value: const f = () => ..., obj.f = function ..., {f: ...}
    if parent is not None and parent.type == 'variable_declarator':
        n = parent.child_by_field_name('name')
    elif parent is not None and parent.type in ('assignment_expression', 'pair'):
        n = parent.child_by_field_name('left' if parent.type == 'assignment_expression' else 'key')
        if n is not None and n.type == 'member_expression':
            n = n.child_by_field_name('property')
    return _text(n, src) if n is not None else ''


_WRAPPERS = {'export_statement', 'variable_declarator', 'lexical_declaration', 'variable_declaration',
             'assignment_expression', 'expression_statement', 'pair', 'template_declaration'}


def _anchor(node):
    """The outermost node that starts the function's text (export, const, an assignment statement,
    a C++ template), whose preceding comment documents the function (not used for Python)."""
    while node.parent is not None and node.parent.type in _WRAPPERS:
        node = node.parent
    return node


def _text(node, src):
    return src[node.start_byte:node.end_byte].decode('utf-8', errors='replace')


def _query(language):
    """A query for the function and comment nodes of a language (run in C: no Python walk over every node)."""
    if language not in _QUERIES:
        import tree_sitter
        lang = parser(language).language
        kinds = [(k, 'f') for k in sorted(FUNCTION_NODES[language])] + [(k, 'c') for k in sorted(COMMENT_NODES)]
        _QUERIES[language] = tree_sitter.Query(lang, ' '.join(f"({k}) @{c}" for k, c in kinds
                                                               if lang.id_for_node_kind(k, True) is not None))
    return _QUERIES[language]


def _walk(root, language):
    """(function nodes with their enclosing class names, comment nodes), each in file order."""
    import tree_sitter
    caps = tree_sitter.QueryCursor(_query(language)).captures(root)
    funcs = []
    for node in sorted(caps.get('f', []), key=lambda n: n.start_byte):
        classes, a = [], node.parent
        while a is not None:
            if a.type in CLASS_NODES:
                n = a.child_by_field_name('name')
                if n is not None:
                    classes.append(n.text.decode('utf-8', errors='replace'))
            a = a.parent
        funcs.append((node, tuple(classes[::-1])))
    return funcs, sorted(caps.get('c', []), key=lambda n: n.start_byte)


def _dedent(text, col):
    """The function's lines without its own indentation (the first line starts at column `col`)."""
    lines = text.split('\n')
    pre = ' ' * col
    return '\n'.join([lines[0]] + [ln[col:] if ln.startswith(pre) or not ln[:col].strip() else ln for ln in lines[1:]])


# ----------------------------------------------------------------------------- documentation

def _doc_comment(anchor, comments, starts, src, language):
    """The raw comment text documenting the function that starts at `anchor`, or ''."""
    i = bisect.bisect_right(starts, anchor.start_byte) - 1
    run = []
    while i >= 0:
        c = comments[i]
        end = (run[0] if run else anchor).start_byte
        gap, text = src[c.end_byte:end], _text(c, src)
        # a /** */ block documents what follows it across one blank line (as JSDoc and Javadoc read
        # it); a run of // or # lines must touch the function
        if gap.strip() or gap.count(b'\n') > (2 if not run and text.startswith('/**') else 1):
            break
        if not run:  # the comment right before the function decides the style
            if text.startswith('/*') and language in ('java', 'php', 'javascript', 'c', 'cpp'):
                return text if text.startswith('/**') or language in ('c', 'cpp') else ''
            style = '//' if language in ('go', 'c', 'cpp') else '#' if language == 'ruby' else None
            if style is None or not text.startswith(style) or text.startswith('#!'):
                return ''
        elif not text.startswith(style):
            break
        run.insert(0, c)
        i -= 1
    return '\n'.join(_text(c, src) for c in run)


def strip_markers(raw):
    """The text of a comment without /** * */, //, # markers."""
    raw = raw.strip()
    if raw.startswith('/*'):
        raw = re.sub(r'^/\*+!?', '', raw)
        raw = re.sub(r'\*+/$', '', raw)
        lines = [re.sub(r'^\s*\*(?!/) ?', '', ln) for ln in raw.split('\n')]
    else:
        lines = [re.sub(r'^\s*(//+!?|#+) ?', '', ln) for ln in raw.split('\n')]
    return inspect.cleandoc('\n'.join(lines)).strip()


def python_docstring(node, src):
    """(cleaned docstring, its statement node) of a Python function_definition, or ('', None)."""
    body = node.child_by_field_name('body')
    first = body.named_children[0] if body is not None and body.named_children else None
    if first is None or first.type != 'expression_statement' or len(first.named_children) != 1 or \
            first.named_children[0].type not in ('string', 'concatenated_string'):
        return '', None
    try:
        value = ast.literal_eval(_text(first.named_children[0], src))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return '', None
    if not isinstance(value, str):  # a bytes literal is no docstring
        return '', None
    return inspect.cleandoc(value), first


_TAG = re.compile(r'^\s*((?![@\\]brief\b)@\w|:(param|type|return|returns|rtype|raises|arg|keyword)\b|>>>|\.\. \w|'
                  r'\S+::(\s|$)|(Args|Arguments|Returns|Raises|Parameters|Example|Examples|Note|Yields):\s*$|'
                  r'\\(param|tparam|returns?|retval|throws?|exception|note|see|sa|pre|post|warning|since|deprecated|'
                  r'code|example|author|version|bug|todo)\b)')  # the last: Doxygen's backslash commands (C, C++)


# HTML tags of documentation comments (not every <...>: List<String> stays)
_HTML = re.compile(r'</?(a|b|i|u|s|em|strong|code|tt|pre|p|br|hr|ul|ol|li|dl|dt|dd|h\d|blockquote|sup|sub|span|div|'
                   r'table|tr|td|th|small|big|var|kbd|samp|cite|img|font|center)\b[^>]*>', re.I)


def first_paragraph(doc):
    """The documentation's first paragraph as one line: up to a blank line or a tag (@param,
    :param, Args:, >>>, RDoc's `name::` lists, Doxygen's \\param), without markup ({@link X}, <p>, `x`, :func:`x`,
    [text](url), RDoc's _x_ and +x+, entities)."""
    if re.match(r'\s*[@\\]file\b', doc):  # Doxygen's file header before the first function: not its documentation
        return ''
    lines = []
    for ln in doc.strip().split('\n'):
        if not ln.strip() or _TAG.match(ln):
            break
        lines.append(ln)
    text = re.sub(r'^\s*[@\\]brief\s+', '', ' '.join(lines))  # Doxygen's \brief / @brief: the summary itself
    text = re.sub(r'\{@link(?:plain)?\s+\S+\s+([^}]+)\}', r'\1', text)  # {@link X label}: the label
    text = re.sub(r'\{@\w+\s*([^}]*)\}', r'\1', text)  # {@code x}, {@link X}: the content
    text = _HTML.sub('', text)
    text = re.sub(r':[\w:.-]+:`~?([^`]*)`', r'\1', text)
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)
    text = re.sub(r'`+([^`]*)`+', r'\1', text)
    text = re.sub(r'\*\*(\S.*?)\*\*', r'\1', text)  # bold; not __x__, which is a Python name
    text = re.sub(r'(?<!\w)([_+])([^\W_]([\w.]*[^\W_])?)\1(?!\w)', r'\2', text)  # RDoc's _emphasis_, +code+
    return ' '.join(html.unescape(text).split())


def _without_docstring(node, stmt, src):
    """A Python function's bytes without its docstring statement (its lines, when it has them alone)."""
    start, end = stmt.start_byte, stmt.end_byte
    line_start = src.rfind(b'\n', 0, start) + 1
    line_end = src.find(b'\n', end)
    line_end = len(src) if line_end < 0 else line_end
    if not src[line_start:start].strip() and not src[end:line_end].strip():
        start, end = line_start, min(line_end + 1, node.end_byte)
    return src[node.start_byte:start] + src[end:node.end_byte]


# ----------------------------------------------------------------------------- the public API

def functions(text, language):
    """Every function of a file, documented or not, in file order: dicts of name, qualname, line and
    end_line (1-based), kind ('constructor' or 'function'), doc (cleaned, '' if none), query, code
    (the function without its documentation, dedented) and original_string (with a Python docstring)."""
    src = text.encode('utf-8', errors='replace')
    tree = parser(language).parse(src)
    funcs, comments = _walk(tree.root_node, language)
    starts = [c.start_byte for c in comments]
    out = []
    for node, classes in funcs:
        name = _name(node, src, language)
        if language == 'python':
            doc, stmt = python_docstring(node, src)
            raw = src[node.start_byte:node.end_byte]
            code = _without_docstring(node, stmt, src) if stmt is not None else raw
        else:
            anchor = _anchor(node)
            raw_doc = _doc_comment(anchor, comments, starts, src, language)
            doc = strip_markers(raw_doc) if raw_doc else ''
            if anchor.type in ('lexical_declaration', 'variable_declaration', 'expression_statement'):
                node = anchor  # `const f = () => ...`: the whole statement is the function's code
            raw = code = src[node.start_byte:node.end_byte]
        col = node.start_point[1]
        # a C++ function without a return type is a constructor or destructor
        ctor = node.type == 'constructor_declaration' or (language == 'cpp' and node.child_by_field_name('type') is None)
        out.append({'name': name, 'qualname': '.'.join(classes + (name,)), 'line': node.start_point[0] + 1,
                    'end_line': node.end_point[0] + 1, 'kind': 'constructor' if ctor else 'function', 'doc': doc,
                    'query': first_paragraph(doc) if doc else '',
                    'code': _dedent(code.decode('utf-8', errors='replace'), col),
                    'original_string': _dedent(raw.decode('utf-8', errors='replace'), col)})
    return out


def list_functions(text, language):
    """[{'name', 'qualname', 'line', 'end_line'}] of every function of a file (what code search lists)."""
    return [{k: f[k] for k in ('name', 'qualname', 'line', 'end_line')} for f in functions(text, language) if f['name']]


def code_lines(code):
    return sum(1 for line in code.splitlines() if line.strip())


def csn_reason(f, language):
    """Why CodeSearchNet's filters leave out a function, or None when it is a pair."""
    if not f['doc']:
        return 'undocumented'
    if not f['name']:
        return 'anonymous'
    if 'test' in f['name'].lower():
        return 'test'
    if f['kind'] == 'constructor' or STANDARD[language].match(f['name']):
        return 'constructor or standard method'
    if len(re.findall(r'\w+', f['query'])) < 3:
        return 'query under 3 tokens'
    if code_lines(f['code']) < 3:
        return 'code under 3 lines'
    return None


def pairs(text, language, path='', stats=None):
    """CodeSearchNet-style records of one file: language, path, line, name, qualname, query, doc,
    code, original_string. stats (a dict) counts functions and the reasons others were left out."""
    stats = {} if stats is None else stats
    out = []
    for f in functions(text, language):
        stats['functions'] = stats.get('functions', 0) + 1
        why = csn_reason(f, language)
        if why:
            stats[why] = stats.get(why, 0) + 1
            continue
        out.append({'language': language, 'path': path, **f})
    return out


def csn_row(pair, repo, partition, sha='', url=''):
    """A pair as a row of CodeSearchNet's distributed jsonl (its fields, benchmarks.md). As there, a
    Python row's code still holds its docstring (readers strip it), other languages' code has no
    documentation, and docstring_tokens are the query's."""
    from data import simple_tokens
    return {'repo': repo, 'path': pair['path'], 'func_name': pair['qualname'], 'original_string': pair['original_string'],
            'language': pair['language'], 'code': pair['original_string'], 'code_tokens': simple_tokens(pair['code']),
            'docstring': pair['doc'], 'docstring_tokens': simple_tokens(pair['query']), 'sha': sha,
            'partition': partition, 'url': url or f"local://{repo}/{pair['path']}#L{pair['line']}-L{pair['end_line']}"}
