"""sources.py and debian.py: a tiny archive of source packages built here, served from file:// (no network),
and the other inputs.

    python -m pytest -q tests/test_sources.py
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

import debian
import sources
from sources import CorpusError

PY = b'def add(a, b):\n    """Add two numbers."""\n    return a + b\n'
GO = b'package p\n\n// Add adds.\nfunc Add(a, b int) int {\n\treturn a + b\n}\n'


def make_tar(path, members, top='pkg-1.0'):
    """A .tar.gz of (name, bytes | ('sym', target) | ('lnk', target) | ('dev', None)) members, the same
    bytes every time (gzip mtime 0), so that a rebuilt archive has the sha256 of the first."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tf:
        for name, data in members:
            ti = tarfile.TarInfo(f"{top}/{name}" if top and not name.startswith(('/', '..')) else name)
            if isinstance(data, tuple):
                ti.type = {'sym': tarfile.SYMTYPE, 'lnk': tarfile.LNKTYPE, 'dev': tarfile.CHRTYPE}[data[0]]
                ti.linkname = data[1] or ''
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    with open(path, 'wb') as f:
        f.write(gzip.compress(buf.getvalue(), mtime=0))


def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def paragraph(name, version, deps, directory, tarball, digest=None, size=None):
    size = os.path.getsize(tarball) if size is None else size
    return (f"Package: {name}\nVersion: {version}\nBuild-Depends: debhelper-compat (= 13), {deps}\n"
            f"Format: 3.0 (quilt)\nChecksums-Sha256:\n {digest or sha(tarball)} {size} {os.path.basename(tarball)}\n"
            f" {'0' * 64} 12 {name}_{version}.debian.tar.xz\nDirectory: {directory}\n\n")


PACKAGES = {  # name: (build helper, members)
    'pyfoo': ('dh-python', [('foo/core.py', PY), ('foo/util.py', PY), ('debian/rules', b'x'), ('README', b'r')]),
    'gobar': ('dh-golang <!nocheck>, golang-any:native', [('bar.go', GO), ('debian/x.go', GO)]),
    'pycorrupt': ('dh-python', None),
    'pymismatch': ('dh-python', [('m.py', PY)]),
    'pytraversal': ('dh-python', [('ok.py', PY), ('../evil.py', PY)]),
    'pyabsolute': ('dh-python', [('ok.py', PY), ('/tmp/evil.py', PY)]),
    'pysymlink': ('dh-python', [('ok.py', PY), ('link.py', ('sym', '../../../etc/passwd'))]),
    'pydevice': ('dh-python', [('ok.py', PY), ('null', ('dev', None))]),
    'pyempty': ('dh-python', [('README', b'nothing to read')]),
    'pynotpython': ('dh-python', [('a.go', GO), ('b.go', GO)]),
    'pymissing': ('dh-python', [('gone.py', PY)]),
}


def make_archive(root, versions=None):
    """root/archive (the pool) and root/Sources; returns the index list for debian_corpus."""
    versions = versions or {}
    text = ''
    for name, (deps, members) in PACKAGES.items():
        v = versions.get(name, '1.0')
        d = f"pool/main/{name[0]}/{name}"
        os.makedirs(os.path.join(root, 'archive', d), exist_ok=True)
        tb = os.path.join(root, 'archive', d, f"{name}_{v}.orig.tar.gz")
        if members is None:
            with open(tb, 'wb') as f:
                f.write(b'\x1f\x8b\x08\x00' + bytes(range(200)))  # a gzip header, then garbage
        else:
            make_tar(tb, members + ([('v.py', v.encode() + b'\n')] if name == 'pyfoo' else []))
        text += paragraph(name, f"{v}-1", deps, d, tb, digest='1' * 64 if name == 'pymismatch' else None)
        if name == 'pymissing':
            os.remove(tb)
    with open(os.path.join(root, 'Sources'), 'w') as f:
        f.write(text)
    return [(os.path.join(root, 'Sources'), f"file://{root}/archive")]


def build(tmp_path, **kw):
    kw = {'repos_per_language': 5, 'languages': ('python', 'go'), 'jobs': 2, **kw}
    return debian.debian_corpus(str(tmp_path / 'data'), indexes=kw.pop('indexes'), **kw)


def leftovers(root):
    return [os.path.join(r, f) for r, ds, fs in os.walk(root) for f in fs + ds if f.endswith(('.part', '.tmp'))]


def test_corpus_skips_every_bad_package_and_unpacks_safely(tmp_path):
    indexes, existed = make_archive(str(tmp_path)), os.path.exists('/tmp/evil.py')
    repos, language_of = build(tmp_path, indexes=indexes)
    assert language_of == {'pyfoo': 'python', 'gobar': 'go'}
    src = tmp_path / 'data' / 'src'
    rel = sorted(os.path.relpath(p, src / 'pyfoo') for p in repos['pyfoo'])
    assert rel == ['foo/core.py', 'foo/util.py', 'v.py']  # the top directory stripped, debian/ and README left out
    assert [os.path.relpath(p, src / 'gobar') for p in repos['gobar']] == ['bar.go']
    assert sorted(os.listdir(src)) == ['gobar', 'pyfoo']
    assert not (tmp_path / 'evil.py').exists() and not (tmp_path / 'data' / 'evil.py').exists()
    assert existed or not os.path.exists('/tmp/evil.py')  # the absolute member was not written either
    m = json.load(open(tmp_path / 'data' / 'manifest.json'))
    assert sorted(m['packages']) == ['gobar', 'pyfoo']
    assert m['packages']['pyfoo']['version'] == '1.0-1' and m['packages']['pyfoo']['files'] == 3
    tb = tmp_path / 'archive' / 'pool/main/p/pyfoo/pyfoo_1.0.orig.tar.gz'
    assert m['packages']['pyfoo']['sha256'] == sha(tb)
    reasons = {n: r['reason'] for n, r in m['rejected'].items()}
    assert reasons == {'pycorrupt': 'corrupt', 'pymismatch': 'sha256 mismatch', 'pytraversal': 'unsafe archive',
                       'pyabsolute': 'unsafe archive', 'pysymlink': 'unsafe archive', 'pydevice': 'unsafe archive',
                       'pyempty': 'no source file', 'pynotpython': 'files not of its language'}
    assert m['skipped']['download failed'] == 1  # pymissing: tried again by the next run, not recorded
    assert leftovers(tmp_path / 'data') == [] and os.listdir(tmp_path / 'data' / 'tarballs') == []


def test_rerun_fetches_nothing_and_reports_what_changed(tmp_path, monkeypatch, capsys):
    indexes = make_archive(str(tmp_path))
    build(tmp_path, indexes=indexes)
    calls = []
    real = debian._download
    monkeypatch.setattr(debian, '_download', lambda *a: calls.append(a[0]) or real(*a))
    repos, _ = build(tmp_path, indexes=indexes)
    assert [os.path.basename(u) for u in calls] == ['pymissing_1.0.orig.tar.gz']  # only the failed download again
    assert 'WARNING' not in capsys.readouterr().err
    indexes = make_archive(str(tmp_path), versions={'pyfoo': '1.1'})  # the archive moves on
    calls.clear()
    repos, _ = build(tmp_path, indexes=indexes)
    err = capsys.readouterr().err
    assert 'WARNING' in err and 'the archive moved on' in err and '~ pyfoo 1.0-1 -> 1.1-1' in err
    assert open(next(p for p in repos['pyfoo'] if p.endswith('v.py'))).read() == '1.1\n'
    assert json.load(open(tmp_path / 'data' / 'manifest.previous.json'))['packages']['pyfoo']['version'] == '1.0-1'
    assert sorted(os.path.basename(u) for u in calls) == ['pyfoo_1.1.orig.tar.gz', 'pymissing_1.0.orig.tar.gz']


def test_seeded_choice_and_caps(tmp_path):
    index = {f"p{i}": {'language': 'python', 'size': 10 * i, 'version': '1', 'sha256': ''} for i in range(30)}
    index['g'] = {'language': 'go', 'size': 1, 'version': '1', 'sha256': ''}
    a = debian.choose(index, ('python', 'go'), 1, 100, {'p3'}, skipped := {})
    assert a == debian.choose(dict(reversed(list(index.items()))), ('python', 'go'), 1, 100, {'p3'}, {})
    assert a != debian.choose(index, ('python', 'go'), 2, 100, {'p3'}, {})
    assert set(a['python']) == {f"p{i}" for i in range(11)} - {'p3'} and a['go'] == ['g']
    assert skipped == {'excluded': 1, 'tarball over max_package_bytes': 19}
    # another package entering the archive leaves the order of the others as it was
    b = debian.choose({**index, 'p5b': index['p5']}, ('python',), 1, 100, {'p3'}, {})['python']
    assert [n for n in b if n != 'p5b'] == a['python']
    indexes = make_archive(str(tmp_path))
    repos, _ = build(tmp_path, indexes=indexes, repos_per_language=1, languages=('python',))
    assert len(repos) == 1


def test_fetch_resumes_a_half_written_part_and_checks_sha256(tmp_path):
    blob = os.urandom(100_000)
    (tmp_path / 'f.bin').write_bytes(blob)
    url, dest, digest = f"file://{tmp_path}/f.bin", str(tmp_path / 'out.bin'), hashlib.sha256(blob).hexdigest()
    (tmp_path / 'out.bin.part').write_bytes(blob[:40_000])
    assert debian.fetch(url, dest, len(blob), digest) == 60_000  # only the rest was transferred
    assert open(dest, 'rb').read() == blob and not os.path.exists(dest + '.part')
    os.remove(dest)
    (tmp_path / 'out.bin.part').write_bytes(b'x' * 40_000)  # a wrong prefix: fetched again from the start
    assert debian.fetch(url, dest, len(blob), digest) == 60_000 + len(blob)
    assert open(dest, 'rb').read() == blob
    os.remove(dest)
    with pytest.raises(CorpusError, match='sha256 mismatch'):
        debian.fetch(url, dest, len(blob), '0' * 64)
    assert not os.path.exists(dest) and not os.path.exists(dest + '.part')
    with pytest.raises(CorpusError, match='download failed'):
        debian.fetch(f"file://{tmp_path}/absent.bin", dest, 10, '0' * 64)
    assert not os.path.exists(dest)


def test_unpack_refuses_what_leaves_the_tree(tmp_path):
    for members, why in [([('a.py', PY), ('../x.py', PY)], 'outside the tree'),
                         ([('/etc/x.py', PY)], 'absolute path'),
                         ([('l', ('sym', '/etc/passwd'))], 'link out of the tree'),
                         ([('d/l', ('lnk', '../../x'))], 'link out of the tree'),
                         ([('null', ('dev', None))], 'device file')]:
        tb = str(tmp_path / 't.tar.gz')
        make_tar(tb, members)
        with pytest.raises(CorpusError, match=why):
            debian.unpack(tb, str(tmp_path / 'out'))
        assert not os.path.exists(tmp_path / 'out') and not os.path.exists(tmp_path / 'out.tmp')
    make_tar(tb, [('a.py', PY), ('in.py', ('sym', 'a.py'))])  # a link inside the tree: not unpacked, not refused
    assert debian.unpack(tb, str(tmp_path / 'out'))['files'] == 1
    (tmp_path / 'bad.tar.gz').write_bytes(open(tb, 'rb').read()[:60])  # truncated
    with pytest.raises(CorpusError, match='corrupt'):
        debian.unpack(str(tmp_path / 'bad.tar.gz'), str(tmp_path / 'out2'))
    assert not os.path.exists(tmp_path / 'out2.tmp')


def test_missing_apt_get_and_archive_errors_name_the_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', str(tmp_path))  # no apt-get on it
    with pytest.raises(CorpusError, match=r"apt-get not found.*--input="):
        debian.debian_corpus(str(tmp_path / 'data'), archives=[('http://x/debian', 'stable', ['main'], '')])
    (tmp_path / 'apt-get').write_text('#!/bin/sh\necho "E: Failed to fetch http://x/debian" >&2\nexit 100\n')
    os.chmod(tmp_path / 'apt-get', 0o755)
    with pytest.raises(CorpusError, match=r"apt-get update .* failed: E: Failed to fetch.*--input="):
        debian.apt_update(str(tmp_path / 'apt'), [('http://x/debian', 'stable', ['main'], '')])
    assert '\n' not in str(pytest.raises(CorpusError, debian.apt_update, str(tmp_path / 'a'), []).value)


def test_exclusion_list(tmp_path):
    (tmp_path / 'empty.txt').write_text('# nothing\n\n')
    with pytest.raises(CorpusError, match=r"empty.txt.*no name in it"):
        sources.read_exclusions(str(tmp_path / 'empty.txt'))
    (tmp_path / 'ex.txt').write_text('gobar  # vendored elsewhere\npyfoo\n')
    assert sources.read_exclusions(str(tmp_path / 'ex.txt')) == {'gobar', 'pyfoo'}
    indexes = make_archive(str(tmp_path))
    repos, _ = build(tmp_path, indexes=indexes, excluded=sources.read_exclusions(str(tmp_path / 'ex.txt')))
    assert repos == {}
    for r in ('a', 'b'):
        os.makedirs(tmp_path / 'repos' / r)
        (tmp_path / 'repos' / r / 'm.py').write_text('x = 1\n')
    repos, _, _, _ = sources.load_corpus(str(tmp_path / 'repos'), exclude=str(tmp_path / 'ex.txt'))
    assert sorted(repos) == ['a', 'b']
    (tmp_path / 'ex2.txt').write_text('a\n')
    os.makedirs(tmp_path / 'repos' / 'b' / 'sub')
    (tmp_path / 'repos' / 'b' / 'sub' / 'n.py').write_text('y = 2\n')
    repos, _, _, roots = sources.load_corpus(str(tmp_path / 'repos'), exclude=str(tmp_path / 'ex2.txt'))
    assert sorted(repos) == ['b']
    assert [(r, p) for r, p, _ in sources.iter_files(repos, roots)] == [('b', 'm.py'), ('b', 'sub/n.py')]
    assert [p for _, p, _ in sources.iter_files(repos)] == ['b/m.py', 'b/sub/n.py']  # no roots: prepare's rule
    assert sources.file_tasks(repos, roots)[1] == ('b', 'sub/n.py', str(tmp_path / 'repos' / 'b' / 'sub' / 'n.py'))


def test_machine_archives_reads_list_and_deb822(tmp_path):
    (tmp_path / 'a.list').write_text('# c\ndeb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main contrib\n'
                                     'deb-src http://m/debian bookworm main\ndeb https://other.example/apt x main\n')
    (tmp_path / 'b.sources').write_text('Types: deb deb-src\nURIs: http://m/debian-security\nSuites: bookworm-security\n'
                                        'Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n'
                                        'Types: deb\nURIs: http://m/debian\nSuites: sid\nComponents: main\n'
                                        'Enabled: no\n')
    assert debian.machine_archives([str(tmp_path / 'a.list'), str(tmp_path / 'b.sources')]) == [
        ('http://m/debian', 'bookworm', ['main', 'contrib'], '/k.gpg'),
        ('http://m/debian-security', 'bookworm-security', ['main'], '/usr/share/keyrings/debian-archive-keyring.gpg')]


@pytest.mark.skipif(not shutil.which('dpkg'), reason='dpkg is the reference')
def test_version_order_matches_dpkg():
    vs = ['1.0~rc1-1', '1.0-1', '1.0-1+b1', '1.0-2', '1.0a-1', '1.0+dfsg-1', '1.0.1-1', '1:0.9-1', '2.0~~a', '2.0~a',
          '2.0', '10.0', '1.0-1~bpo1', '0.10', '0.9', '1.2.3-4.1']
    for a in vs:
        for b in vs:
            ref = subprocess.run(['dpkg', '--compare-versions', a, 'lt', b]).returncode == 0
            assert (debian.version_key(a) < debian.version_key(b)) == ref, (a, b)


def test_parse_sources_fields_and_build_helpers(tmp_path):
    (tmp_path / 'S').write_text(
        "Package: native\nVersion: 3\nBuild-Depends: gem2deb (>= 1) [amd64]\nDirectory: pool/main/n/native\n"
        "Checksums-Sha256:\n " + 'a' * 64 + " 5 native_3.tar.xz\n\n"
        "Package: multi\nVersion: 1-1\nBuild-Depends-Indep: pkg-js-tools\nDirectory: pool/main/m/multi\n"
        "Checksums-Sha256:\n " + 'b' * 64 + " 7 multi_1.orig-sub.tar.gz\n " + 'c' * 64 + " 9 multi_1.orig.tar.gz\n\n"
        "Package: extra\nVersion: 1\nExtra-Source-Only: yes\nBuild-Depends: gem2deb\nDirectory: d\n"
        "Checksums-Sha256:\n " + 'd' * 64 + " 1 extra_1.tar.gz\n\n"
        "Package: twolang\nVersion: 1\nBuild-Depends: dh-python, dh-golang\nDirectory: d\n"
        "Checksums-Sha256:\n " + 'e' * 64 + " 1 twolang_1.orig.tar.gz\n\n"
        "Package: clib\nVersion: 1\nBuild-Depends: debhelper, cmake\nDirectory: d\n"
        "Checksums-Sha256:\n " + 'f' * 64 + " 1 clib_1.orig.tar.bz2\n")
    idx = debian.parse_sources(str(tmp_path / 'S'), 'http://m/debian/')
    assert sorted(idx) == ['clib', 'multi', 'native', 'twolang']
    assert idx['native'] == {'version': '3', 'language': 'ruby', 'file': 'native_3.tar.xz', 'size': 5,
                             'sha256': 'a' * 64, 'url': 'http://m/debian/pool/main/n/native/native_3.tar.xz'}
    assert idx['multi']['file'] == 'multi_1.orig.tar.gz' and idx['multi']['language'] == 'javascript'
    assert idx['twolang']['language'] is None and idx['clib']['language'] == 'c'


def test_default_corpus_is_this_python(tmp_path):
    repos, source, language_of, roots = sources.load_corpus('')
    assert 'offline' in source and 'stdlib' in repos and set(language_of.values()) == {'python'}
    assert any(p.endswith('json/decoder.py') for p in repos['stdlib/json']) and roots == {}
    paths = [p for r, p, _ in sources.iter_files({'stdlib/json': repos['stdlib/json']})]
    assert 'json/decoder.py' in paths  # the path prepare.py gives it today
    with pytest.raises(CorpusError, match="not found"):
        sources.load_corpus(str(tmp_path / 'nope'))


def test_offline_rerun_uses_the_last_update(tmp_path, monkeypatch, capsys):
    """apt-get update fails (no network) but the private lists of the last update are there: they are
    used, said as a warning; without them the error names the fallback."""
    lists = tmp_path / 'apt' / 'lists'
    lists.mkdir(parents=True)
    (lists / 'm_debian_dists_s_main_source_Sources').write_text('')
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'bin' / 'apt-get').write_text(
        '#!/bin/sh\nfor a in "$@"; do [ "$a" = update ] && { echo "E: Failed to fetch x" >&2; exit 100; }; done\n'
        f'echo "{lists}/m_debian_dists_s_main_source_Sources|http://m/debian/"\n')
    os.chmod(tmp_path / 'bin' / 'apt-get', 0o755)
    monkeypatch.setenv('PATH', str(tmp_path / 'bin'))
    archives = [('http://m/debian', 's', ['main'], '')]
    assert debian.apt_update(str(tmp_path / 'apt'), archives) == [(f"{lists}/m_debian_dists_s_main_source_Sources",
                                                                   'http://m/debian/')]
    assert 'warning: apt-get update failed (E: Failed to fetch x)' in capsys.readouterr().err
    os.remove(lists / 'm_debian_dists_s_main_source_Sources')
    with pytest.raises(CorpusError, match=r'apt-get update .*failed.*--input='):
        debian.apt_update(str(tmp_path / 'apt'), archives)


def test_load_corpus_debian_with_an_exclusion_list(tmp_path):
    indexes = make_archive(str(tmp_path))
    (tmp_path / 'ex.txt').write_text('gobar\n')
    repos, source, language_of, roots = sources.load_corpus('debian', data_dir=str(tmp_path / 'data'), exclude=str(
        tmp_path / 'ex.txt'), indexes=indexes, languages=('python', 'go'), repos_per_language=3, jobs=1)
    assert language_of == {'pyfoo': 'python'} and 'manifest.json' in source
    assert sorted(p for _, p, _ in sources.iter_files(repos, roots)) == ['foo/core.py', 'foo/util.py', 'v.py']
    with pytest.raises(CorpusError, match="languages: unknown cobol"):
        debian.debian_corpus(str(tmp_path / 'data'), languages=('cobol',), indexes=indexes)


def test_fetch_tries_a_network_error_again_but_not_a_404(tmp_path, monkeypatch):
    """A connection reset mid-download is tried again from where the .part ends, so a transient
    failure does not swap the package for the next candidate; a 404 is final after one try."""
    import urllib.error
    blob = os.urandom(50_000)
    (tmp_path / 'f.bin').write_bytes(blob)
    url, dest, digest = f"file://{tmp_path}/f.bin", str(tmp_path / 'out.bin'), hashlib.sha256(blob).hexdigest()
    real, calls = debian._download, []

    def flaky(u, part, offset, timeout):
        calls.append(offset)
        if len(calls) == 1:  # the first try writes 20,000 bytes, then the connection drops
            open(part, 'wb').write(blob[:20_000])
            raise ConnectionResetError(104, 'Connection reset by peer')
        return real(u, part, offset, timeout)
    monkeypatch.setattr(debian, '_download', flaky)
    monkeypatch.setattr(debian.time, 'sleep', lambda s: None)
    debian.fetch(url, dest, len(blob), digest)
    assert calls == [0, 20_000] and open(dest, 'rb').read() == blob
    os.remove(dest)

    def missing(u, part, offset, timeout):
        calls.append(u)
        raise urllib.error.HTTPError(u, 404, 'Not Found', {}, None)
    calls.clear()
    monkeypatch.setattr(debian, '_download', missing)
    with pytest.raises(CorpusError, match=r'download failed \(HTTP Error 404: Not Found\)$'):
        debian.fetch(url, dest, len(blob), digest)
    assert len(calls) == 1 and not os.path.exists(dest)
