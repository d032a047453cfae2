"""
Debian source packages as a corpus of real repositories in every language: the upstream tarball
of each package (.orig, or a native package's own), chosen per language from the Sources index of
this machine's archive by what the package is built with (dh-golang, gem2deb, pkg-php-tools,
pkg-js-tools, dh-python, maven-debian-helper / javahelper; C/C++: none of those, and autotools,
cmake or meson), in a seeded order and under a size cap, confirmed by the file extensions inside.
The apt state is private (data_dir/apt/): the system's apt configuration is never touched.
Downloads are resumable and atomic (.part, renamed once the index's sha256 matches); tarballs are
unpacked with tarfile, refusing absolute paths, '..', links out of the tree and device files, and
leaving out debian/. data_dir/manifest.json records every package, version and sha256; a rebuild
that differs lists what was added, removed and changed.

    repos, language_of = debian_corpus('data/debian', repos_per_language=150)
"""
import glob
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

from sources import MAX_FILE_BYTES, SOURCE_EXTS, CorpusError, _walk

# the corpus languages: CodeSearchNet's six, and C/C++ as one ('c')
LANGUAGES = ('python', 'java', 'javascript', 'go', 'ruby', 'php', 'c')
LANGUAGE_EXTS = {'python': ('.py',), 'java': ('.java',), 'javascript': ('.js', '.mjs', '.cjs'), 'go': ('.go',),
                 'ruby': ('.rb',), 'php': ('.php',), 'c': ('.c', '.h', '.cc', '.cpp', '.cxx', '.hpp', '.hh')}
# what a source package of each language is built with (its Debian helper); C/C++: none of these,
# and an autotools / cmake / meson build
BUILD_TOOLS = {'go': {'dh-golang', 'dh-sequence-golang'}, 'ruby': {'gem2deb'},
               'php': {'pkg-php-tools', 'dh-sequence-phpcomposer'},
               'javascript': {'pkg-js-tools', 'dh-sequence-nodejs'},
               'python': {'dh-python', 'dh-sequence-python3'},
               'java': {'maven-debian-helper', 'javahelper', 'gradle-debian-helper'}}
C_BUILD_TOOLS = {'dh-autoreconf', 'autotools-dev', 'autoconf', 'automake', 'cmake', 'meson', 'dh-sequence-autoreconf'}
TARBALL = re.compile(r'\.tar\.(gz|xz|bz2)$')



def language_of_path(path):
    ext = os.path.splitext(path)[1].lower()
    return next((lang for lang, exts in LANGUAGE_EXTS.items() if ext in exts), None)


# ----------------------------------------------------------------------------- the archive's Sources index

def machine_archives(paths=None):
    """[(uri, suite, [components], signed_by)] of this machine's `deb` entries of Debian archives
    (one-line .list and deb822 .sources formats), in the order apt reads them."""
    if paths is None:
        paths = ['/etc/apt/sources.list'] + sorted(glob.glob('/etc/apt/sources.list.d/*.list')) + \
                sorted(glob.glob('/etc/apt/sources.list.d/*.sources'))
    out = []
    for p in paths:
        if not os.path.isfile(p):
            continue
        with open(p, encoding='utf-8', errors='replace') as f:
            text = f.read()
        if p.endswith('.sources'):
            for para in re.split(r'\n\s*\n', text):
                fields = {k.lower(): ' '.join(v.split()) for k, v in _paragraph(para).items()}
                if 'deb' in fields.get('types', '').split() and fields.get('enabled', 'yes') != 'no':
                    for uri in fields.get('uris', '').split():
                        for suite in fields.get('suites', '').split():
                            out.append((uri, suite, fields.get('components', '').split(), fields.get('signed-by', '')))
        else:
            for line in text.splitlines():
                m = re.match(r'\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)', line.split('#')[0])
                if m:
                    opts = dict(o.split('=', 1) for o in (m.group(1) or '').strip('[] \t').split() if '=' in o)
                    out.append((m.group(2), m.group(3), m.group(4).split(), opts.get('signed-by', '')))
    return [a for a in out if 'debian-archive-keyring' in a[3] or re.search(r'/debian(-security)?/?$', a[0])]


def _paragraph(text):
    """{field: value} of one deb822 paragraph (continuation lines joined with newlines)."""
    fields, key = {}, None
    for line in text.split('\n'):
        if not line or line.startswith('#'):
            continue
        if line[0] in ' \t':
            if key:
                fields[key] += '\n' + line.strip()
        elif ':' in line:
            key, _, value = line.partition(':')
            fields[key] = value.strip()
    return fields


def apt_update(apt_dir, archives):
    """Fetch the Sources indexes of `archives` into a private apt state under apt_dir (apt checks
    the Release signature and the index's hash); returns [(index file, archive uri)]."""
    if not shutil.which('apt-get'):
        raise CorpusError("apt-get not found: --input=debian needs a Debian/Ubuntu machine; use --input= (this "
                          "Python installation's sources, the offline corpus) or --input=DIR of repositories")
    if not archives:
        raise CorpusError("no Debian archive among this machine's apt sources (/etc/apt/sources.list*): "
                          "use --input= (the offline corpus) or --input=DIR")
    for d in ('lists/partial', 'cache/archives/partial'):
        os.makedirs(os.path.join(apt_dir, d), exist_ok=True)
    listing = os.path.join(apt_dir, 'sources.list')
    with open(listing + '.tmp', 'w') as f:
        for uri, suite, comps, signed_by in archives:
            opt = f"[signed-by={signed_by}] " if signed_by else ''
            f.write(f"deb-src {opt}{uri} {suite} {' '.join(comps)}\n")
    os.replace(listing + '.tmp', listing)
    opts = ['-o', f'Dir::Etc::SourceList={os.path.abspath(listing)}', '-o', 'Dir::Etc::SourceParts=/dev/null',
            '-o', f"Dir::State::Lists={os.path.abspath(os.path.join(apt_dir, 'lists'))}",
            '-o', f"Dir::Cache={os.path.abspath(os.path.join(apt_dir, 'cache'))}", '-o', 'Acquire::GzipIndexes=false']
    r = subprocess.run(['apt-get', *opts, '-q', 'update'], capture_output=True, text=True)
    errors = ' | '.join([line for line in (r.stdout + r.stderr).splitlines() if line.startswith(('E:', 'Err:'))][:3])
    t = subprocess.run(['apt-get', *opts, 'indextargets', '--format', '$(FILENAME)|$(REPO_URI)',
                        'Identifier: Sources'], capture_output=True, text=True)
    found = [tuple(line.split('|', 1)) for line in t.stdout.splitlines() if '|' in line]
    found = [(f, u) for f, u in found if os.path.exists(f)]
    if r.returncode != 0 and found:  # offline: the indexes of the last update still name what is unpacked
        print(f"warning: apt-get update failed ({errors or r.returncode}): using the Sources indexes of the last "
              f"update in {apt_dir}/lists", file=sys.stderr, flush=True)
    elif r.returncode != 0 or not found:
        raise CorpusError(f"apt-get update (sources in {listing}) failed: {errors or 'no Sources index written'}; "
                          f"without the archive use --input= (the offline corpus) or --input=DIR")
    return found


def _dependency_names(value):
    """Package names of a Build-Depends value (versions, architectures, profiles, :any dropped)."""
    value = re.sub(r'\([^)]*\)|\[[^\]]*\]|<[^>]*>', ' ', value)
    return {n.strip().split(':')[0] for alt in value.split(',') for n in alt.split('|') if n.strip()}


def package_language(deps):
    """The corpus language a source package is built for, from its build dependencies, or None."""
    langs = [lang for lang, tools in BUILD_TOOLS.items() if deps & tools]
    if len(langs) == 1:
        return langs[0]
    if not langs and deps & C_BUILD_TOOLS:
        return 'c'
    return None


def parse_sources(path, base_uri):
    """{package: record} of a Sources index: version, language, tarball name, size, sha256, url."""
    opener = {'.gz': gzip.open, '.xz': lzma.open}.get(os.path.splitext(path)[1], open)
    with opener(path, 'rt', encoding='utf-8', errors='replace') as f:
        text = f.read()
    out = {}
    for para in text.split('\n\n'):
        p = _paragraph(para)
        if 'Package' not in p or p.get('Extra-Source-Only') == 'yes':
            continue
        files = [line.split() for line in p.get('Checksums-Sha256', '').split('\n') if len(line.split()) == 3]
        tars = [(n, int(s), h) for h, s, n in files if TARBALL.search(n) and '.debian.tar.' not in n]
        orig = [t for t in tars if '.orig.tar.' in t[0]]  # the upstream tarball (not a component .orig-x.tar)
        if not orig and len(tars) == 1:
            orig = tars  # a native package
        if len(orig) != 1:
            continue
        name, size, sha = orig[0]
        deps = set()
        for k in ('Build-Depends', 'Build-Depends-Indep', 'Build-Depends-Arch'):
            deps |= _dependency_names(p.get(k, ''))
        out[p['Package']] = {'version': p.get('Version', ''), 'language': package_language(deps),
                             'file': name, 'size': size, 'sha256': sha,
                             'url': f"{base_uri.rstrip('/')}/{p.get('Directory', '').strip('/')}/{name}"}
    return out


def version_key(v):
    """A sort key that orders Debian versions as dpkg does ([epoch:]upstream[-revision])."""
    epoch, _, rest = v.rpartition(':') if ':' in v else ('0', '', v)
    upstream, _, rev = rest.rpartition('-') if '-' in rest else (rest, '', '0')

    def part(s):
        key = []
        for alpha, num in re.findall(r'([^0-9]*)([0-9]*)', s):
            # '~' sorts before the end of the part, the end before letters, letters before the rest
            key.append(tuple((0 if c == '~' else 2 if c.isalpha() else 3, ord(c)) for c in alpha) + ((1, 0),))
            key.append(int(num or 0))
        return key
    return int(epoch or 0), part(upstream), part(rev)


# ----------------------------------------------------------------------------- fetching and unpacking

def file_sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def _download(url, part, offset, timeout):
    """Append url's bytes from `offset` to `part` (from 0 when the server ignores the range)."""
    if url.startswith('file://'):
        src = open(urllib.request.url2pathname(urllib.parse.urlparse(url).path), 'rb')
        src.seek(offset)
    else:
        req = urllib.request.Request(url, headers={'Range': f'bytes={offset}-'} if offset else {})
        src = urllib.request.urlopen(req, timeout=timeout)
        if offset and src.status != 206:
            offset = 0
    n = 0
    with src, open(part, 'ab' if offset else 'wb') as f:
        for block in iter(lambda: src.read(1 << 16), b''):
            f.write(block)
            n += len(block)
    return n


def _download_retrying(url, part, timeout, tries=3, wait=2.0):
    """_download from where `part` ends, tried again after a network error (a timeout, a reset
    connection, an HTTP 5xx): a transient failure would otherwise put the next candidate package
    in the corpus in this one's place. A 404, another HTTP answer or a missing file is final."""
    for t in range(tries):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        try:
            return _download(url, part, have, timeout)
        except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors; the .part stays for a resume
            final = isinstance(e, (FileNotFoundError, ValueError)) or (
                isinstance(e, urllib.error.HTTPError) and e.code < 500)
            if final or t == tries - 1:
                raise CorpusError(f"{url}: download failed ({e}{'' if final else f'; {tries} tries'})") from None
            time.sleep(wait * (t + 1))


def fetch(url, dest, size, sha256, timeout=60):
    """Download url to dest: into dest.part, resumed where an earlier try stopped, and renamed to
    dest only when its size and sha256 are the index's, so dest is absent or right. A resumed
    file that does not match is fetched again from the start, once. Returns the bytes transferred."""
    part, got = dest + '.part', 0
    for attempt in range(2):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if have > size:
            os.remove(part)
            have = 0
        if have < size:
            got += _download_retrying(url, part, timeout)
        digest = file_sha256(part) if os.path.exists(part) else ''
        if os.path.getsize(part) == size and digest == sha256:
            os.replace(part, dest)
            return got
        os.remove(part)
        if have == 0:
            break
    raise CorpusError(f"{url}: sha256 mismatch (got {digest[:16]}..., {os.path.basename(dest)} in the index has "
                      f"{sha256[:16]}...)")


def _unsafe(m):
    """Why a tar member may not be unpacked, or None."""
    name = m.name
    if name.startswith('/') or re.match(r'[A-Za-z]:[\\/]', name):
        return f"absolute path {name!r}"
    if '..' in re.split(r'[\\/]', name):
        return f"path outside the tree {name!r}"
    if m.ischr() or m.isblk() or m.isfifo():
        return f"device file {name!r}"
    if m.issym() or m.islnk():
        target = m.linkname if m.islnk() else os.path.join(os.path.dirname(name), m.linkname)
        norm = os.path.normpath(target)
        if m.linkname.startswith('/') or norm == '..' or norm.startswith('../'):
            return f"link out of the tree {name!r} -> {m.linkname!r}"
    return None


def _member_path(name):
    while name.startswith('./'):
        name = name[2:]
    return name.rstrip('/')


def unpack(tarball, dest, max_bytes=64_000_000, keep_exts=SOURCE_EXTS):
    """Unpack the source files of a tarball into dest, leaving out debian/ and the top directory
    (written as dest.tmp, renamed when complete). A tarball with an absolute path, a '..', a link
    out of the tree or a device file is refused whole. Returns {'files', 'bytes', 'languages'}."""
    tmp = dest + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    stats = {'files': 0, 'bytes': 0, 'languages': {}}
    try:
        with tarfile.open(tarball, 'r:*') as tf:
            members = tf.getmembers()
            for m in members:
                why = _unsafe(m)
                if why:
                    raise CorpusError(f"{tarball}: unsafe archive: {why}")
            names = [_member_path(m.name) for m in members]
            tops = {n.split('/')[0] for n in names if n}
            strip = len(tops) == 1 and all('/' in n or not m.isfile() for n, m in zip(names, members))
            os.makedirs(tmp)
            for m, rel in zip(members, names):
                rel = (rel.split('/', 1)[1] if '/' in rel else '') if strip else rel
                if not m.isfile() or not rel or rel.split('/')[0] == 'debian' or m.size > MAX_FILE_BYTES or \
                        os.path.splitext(rel)[1].lower() not in keep_exts:
                    continue
                stats['bytes'] += m.size
                if stats['bytes'] > max_bytes:
                    raise CorpusError(f"{tarball}: over {max_bytes:,} bytes of source once unpacked")
                out = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with tf.extractfile(m) as src, open(out, 'wb') as f:
                    shutil.copyfileobj(src, f)
                stats['files'] += 1
                lang = language_of_path(rel)
                if lang:
                    stats['languages'][lang] = stats['languages'].get(lang, 0) + m.size
        with open(os.path.join(tmp, '.mose-unpacked'), 'w') as f:
            json.dump({'sha256': file_sha256(tarball), **stats}, f)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise CorpusError(f"{tarball}: corrupt or unreadable tarball ({type(e).__name__}: {e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def unpacked_stamp(dest):
    try:
        with open(os.path.join(dest, '.mose-unpacked')) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def get_package(name, rec, data_dir, keep_tarball=False, timeout=60):
    """Fetch and unpack one package unless data_dir/src/name holds it already; returns its stats
    with 'downloaded' bytes. Raises CorpusError saying what failed."""
    dest = os.path.join(data_dir, 'src', name)
    stamp = unpacked_stamp(dest)
    if stamp and stamp.get('sha256') == rec['sha256']:
        return {**stamp, 'downloaded': 0}
    tarball = os.path.join(data_dir, 'tarballs', rec['file'])
    got = 0
    if not (os.path.exists(tarball) and file_sha256(tarball) == rec['sha256']):
        got = fetch(rec['url'], tarball, rec['size'], rec['sha256'], timeout)
    try:
        stats = unpack(tarball, dest)
    finally:
        if not keep_tarball and os.path.exists(tarball):
            os.remove(tarball)
    return {**stats, 'sha256': rec['sha256'], 'downloaded': got}


# ----------------------------------------------------------------------------- the Debian corpus

def read_index(data_dir, archives=None, indexes=None):
    """({package: record} over the Sources indexes (the highest version where several list one),
    [(archive uri, index sha256)]). indexes: [(Sources file, archive uri)] instead of a private
    `apt-get update`."""
    if indexes is None:
        indexes = apt_update(os.path.join(data_dir, 'apt'), machine_archives() if archives is None else archives)
    index = {}
    for path, uri in indexes:
        for name, rec in parse_sources(path, uri).items():
            if name not in index or version_key(rec['version']) > version_key(index[name]['version']):
                index[name] = rec
    return index, [(uri, file_sha256(path)) for path, uri in indexes]


def choose(index, languages, seed, max_package_bytes, excluded, skipped):
    """{language: [package]} of the candidates, each list in a seeded order that depends on the
    package name only (another package entering the archive does not reorder the others)."""
    cands = {lang: [] for lang in languages}
    for name, rec in index.items():
        if rec['language'] not in cands:
            continue
        why = 'excluded' if name in excluded else 'tarball over max_package_bytes' if rec['size'] > max_package_bytes \
            else None
        if why:
            skipped[why] = skipped.get(why, 0) + 1
        else:
            cands[rec['language']].append(name)
    return {lang: sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
            for lang, names in cands.items()}


def _confirmed(lang, stats):
    """The package's files are mostly of its language (the largest share of the corpus languages' bytes)."""
    by = stats.get('languages', {})
    return by.get(lang, 0) > 0 and by[lang] == max(by.values())


def fetch_corpus(index, cands, data_dir, repos_per_language, bytes_per_language, jobs, rejected, skipped):
    """Fetch candidates in rounds until each language has repos_per_language confirmed packages
    (or bytes_per_language of source, or no candidates left): {package: stats}, kept in candidate order."""
    from tqdm import tqdm
    done, kept, pos = {}, {}, {lang: 0 for lang in cands}
    errors = []
    bar = tqdm(total=0, unit='pkg', desc='debian packages', dynamic_ncols=True, file=sys.stderr)
    with ThreadPoolExecutor(jobs) as pool:
        while True:
            todo = []
            for lang, names in cands.items():
                k = [n for n in kept if index[n]['language'] == lang]
                full = len(k) >= repos_per_language or (bytes_per_language and
                                                        sum(kept[n]['bytes'] for n in k) >= bytes_per_language)
                if not full:
                    want = repos_per_language - len(k)
                    todo += names[pos[lang]:pos[lang] + want + max(2, want // 5)]  # a margin for rejections
                    pos[lang] += want + max(2, want // 5)
            if not todo:
                break
            bar.total += len(todo)
            bar.refresh()
            futures = {n: pool.submit(_one, n, index[n], data_dir, rejected) for n in todo}
            for n, fut in futures.items():
                done[n] = fut.result()
                bar.update(1)
                bar.set_postfix_str(f"{sum(d.get('downloaded', 0) for d in done.values()) / 1e6:.0f} MB fetched")
                if done[n].get('error') and len(errors) < 5:
                    errors.append(done[n]['error'])
            kept = _keep(index, cands, done, repos_per_language, bytes_per_language)
    bar.close()
    for n, d in done.items():
        if 'reason' in d:
            skipped[d['reason']] = skipped.get(d['reason'], 0) + 1
            if d['reason'] != 'download failed':  # a network failure is tried again by the next run
                rejected[n] = {'version': index[n]['version'], 'sha256': index[n]['sha256'], 'reason': d['reason'],
                               'error': d.get('error', '')}
    for e in errors:
        print(f"  skipped: {e}", file=sys.stderr, flush=True)
    return kept


def _one(name, rec, data_dir, rejected):
    old = rejected.get(name)
    if old and old['sha256'] == rec['sha256'] and old['reason'] != 'download failed':  # known bad: not fetched again
        return {'reason': old['reason'], 'error': old.get('error', ''), 'downloaded': 0}
    try:
        stats = get_package(name, rec, data_dir)
    except CorpusError as e:
        msg = str(e)
        reason = next((r for r in ('HTTP Error 404', 'download failed', 'sha256 mismatch', 'unsafe archive', 'corrupt',
                                   'over') if r in msg), 'failed')
        return {'reason': 'not in the archive (404)' if reason == 'HTTP Error 404' else reason, 'error': msg,
                'downloaded': 0}
    if not stats['files']:
        return {'reason': 'no source file', 'downloaded': stats['downloaded']}
    if not _confirmed(rec['language'], stats):
        return {'reason': 'files not of its language', 'downloaded': stats['downloaded']}
    return stats


def _keep(index, cands, done, n_max, byte_cap):
    kept = {}
    for lang, names in cands.items():
        n, total = 0, 0
        for name in names:
            if name not in done:
                break  # candidate order: nothing after a package not yet fetched
            d = done[name]
            if 'reason' in d or n >= n_max or (byte_cap and total >= byte_cap):
                continue
            kept[name], n, total = d, n + 1, total + d['bytes']
    return kept


def corpus_changes(old, new):
    """(added, removed, changed) package lines between two manifests' 'packages'."""
    added = [f"+ {n} {new[n]['version']}" for n in sorted(set(new) - set(old))]
    removed = [f"- {n} {old[n]['version']}" for n in sorted(set(old) - set(new))]
    changed = [f"~ {n} {old[n]['version']} -> {new[n]['version']}" for n in sorted(set(old) & set(new))
               if (old[n]['version'], old[n]['sha256']) != (new[n]['version'], new[n]['sha256'])]
    return added, removed, changed


def debian_corpus(data_dir='data/debian', repos_per_language=150, bytes_per_language=0, max_package_bytes=1_000_000,
                  languages=LANGUAGES, seed=1337, jobs=8, excluded=(), archives=None, indexes=None):
    """{package: [file paths]} and {package: language} of the Debian corpus under data_dir: chosen,
    fetched and unpacked (what is there already is kept), recorded in data_dir/manifest.json."""
    from data import write_json
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown:
        raise CorpusError(f"languages: unknown {', '.join(unknown)} (expected some of {', '.join(LANGUAGES)})")
    t0 = time.time()
    os.makedirs(os.path.join(data_dir, 'tarballs'), exist_ok=True)
    mpath = os.path.join(data_dir, 'manifest.json')
    try:
        with open(mpath) as f:
            old = json.load(f)
    except FileNotFoundError:
        old = None
    except ValueError as e:
        raise CorpusError(f"{mpath}: not a manifest ({e}); remove it to rebuild") from None
    index, used = read_index(data_dir, archives, indexes)
    skipped = {}
    settings = {'repos_per_language': repos_per_language, 'bytes_per_language': bytes_per_language,
                'max_package_bytes': max_package_bytes, 'languages': list(languages), 'seed': seed,
                'excluded': sorted(excluded)}
    cands = choose(index, languages, seed, max_package_bytes, set(excluded), skipped)
    rejected = {n: r for n, r in (old or {}).get('rejected', {}).items()  # those the archive still has as they were
                if n in index and r['sha256'] == index[n]['sha256'] and r['reason'] != 'download failed'}
    kept = fetch_corpus(index, cands, data_dir, repos_per_language, bytes_per_language, jobs, rejected, skipped)
    packages = {n: {'language': index[n]['language'], 'version': index[n]['version'], 'file': index[n]['file'],
                    'url': index[n]['url'], 'size': index[n]['size'], 'sha256': index[n]['sha256'],
                    'files': kept[n]['files'], 'bytes': kept[n]['bytes']} for n in sorted(kept)}
    _remove_stale(data_dir, packages)
    manifest = {'format': 'mose-debian-corpus', 'version': 1, 'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                'settings': settings, 'indexes': used,
                'packages': packages, 'rejected': rejected, 'skipped': skipped,
                'per_language': _per_language(packages, languages), 'seconds': time.time() - t0}
    if old:
        _say_changes(old, manifest, mpath)
    write_json(mpath, manifest)
    _report(manifest, mpath)
    return {n: _walk(os.path.join(data_dir, 'src', n)) for n in packages}, {n: p['language'] for n, p in packages.items()}


def _remove_stale(data_dir, packages):
    """Remove the unpacked trees (ours: they hold a stamp) of packages not in the corpus."""
    src = os.path.join(data_dir, 'src')
    for name in sorted(os.listdir(src)) if os.path.isdir(src) else []:
        p = os.path.join(src, name)
        if name not in packages and (unpacked_stamp(p) or name.endswith('.tmp')):
            shutil.rmtree(p, ignore_errors=True)


def _per_language(packages, languages):
    ps = {lang: [p for p in packages.values() if p['language'] == lang] for lang in languages}
    return {lang: {'repositories': len(v), 'files': sum(p['files'] for p in v), 'bytes': sum(p['bytes'] for p in v)}
            for lang, v in ps.items()}


def _say_changes(old, new, mpath):
    added, removed, changed = corpus_changes(old.get('packages', {}), new['packages'])
    if not added + removed + changed:
        return
    failed = old.get('skipped', {}).get('download failed', 0)
    why = ('the settings changed' if old.get('settings') != new['settings'] else
           f"{failed} download(s) that failed then were tried again, or the archive moved on" if failed else
           'the archive moved on')
    print(f"WARNING: the corpus is not the one of {mpath} ({old.get('created', '?')}): {why}: {len(added)} packages "
          f"added, {len(removed)} removed, {len(changed)} changed (the old manifest is kept as manifest.previous.json)",
          file=sys.stderr, flush=True)
    for line in (added + removed + changed)[:50]:
        print(f"WARNING:   {line}", file=sys.stderr, flush=True)
    shutil.copyfile(mpath, os.path.join(os.path.dirname(mpath), 'manifest.previous.json'))


def _report(m, mpath):
    for lang, s in m['per_language'].items():
        short = ' (fewer than asked: not enough candidates)' if s['repositories'] < m['settings']['repos_per_language'] \
            and not m['settings']['bytes_per_language'] else ''
        print(f"debian {lang}: {s['repositories']} repositories, {s['files']:,} files, {s['bytes'] / 1e6:.1f} MB{short}",
              flush=True)
    if m['skipped']:
        print("debian: skipped packages: " + ', '.join(f"{v:,} {k}" for k, v in sorted(m['skipped'].items())), flush=True)
    print(f"debian: {len(m['packages'])} repositories in {m['seconds']:.0f}s; manifest {mpath}", flush=True)
