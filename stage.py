"""
What every stage script (prepare, pretrain, finetune, evaluate) shares: printing on rank 0 only,
and the one-line exit on bad input, which first takes back the output directories the run
created while they are still empty, so that a run stopped early leaves nothing behind; a `note:`
line, and the plain-text tables evaluate.py and ablate.py print.
"""
import os
import sys
import tempfile

from data import make_dirs, remove_empty_dirs

MASTER = int(os.environ.get('RANK', '0')) == 0   # rank 0 of a torchrun job, or the only process
created = []                                      # directories this run made, outermost first


def print0(*args, **kwargs):
    """print on rank 0 only, flushed (logs of several ranks interleave otherwise)."""
    if MASTER:
        print(*args, flush=True, **kwargs)


def fail(msg):
    """Stop with `error: msg` on one line, no traceback, after removing the still-empty directories this run made."""
    remove_empty_dirs(created)
    sys.exit(f"error: {msg}")


def make_dir(path):
    """os.makedirs(path, exist_ok=True), remembering what it created for `fail`."""
    created.extend(make_dirs(path))


def make_out_dir(path):
    """Create the output directory and prove it takes files, before any work is done; `fail` if not."""
    try:
        make_dir(path)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        fail(f"out_dir {path!r} is not writable ({e.strerror or e})")


def note(msg):
    """What a run skipped or chose for the user, on one line."""
    print(f"note: {msg}")


def format_table(header, rows):
    """Right-aligned columns; the first column left-aligned."""
    cells = [header] + [[str(x) for x in r] for r in rows]
    w = [max(len(r[j]) for r in cells) for j in range(len(header))]
    return '\n'.join('  '.join(x.ljust(w[j]) if j == 0 else x.rjust(w[j]) for j, x in enumerate(r)) for r in cells)
