"""
Strict configurator, in the spirit of nanoGPT's "poor man's configurator".

A stage script defines its defaults as plain globals and then runs
    exec(open('configurator.py').read())
which applies, left to right,
    python pretrain.py config/mose_tiny.py --batch_size=8 --compile=false
config files (executed as Python) and --key=value overrides.

Where nanoGPT is loose this is strict:
- a key that is not a default (in a file or on the command line) is an error that
  names the key and the nearest known keys;
- a value is split on the first '=' only, so --init_from=path=with=equals works;
  '--key value' (two arguments) means the same as '--key=value';
- values are parsed with ast.literal_eval; a bare word is a string; true/false are
  booleans; an int is accepted where the default is a float (promoted); where the default is a
  string the text is kept as typed (--exit=18 and --exit=4,36 are the strings '18', '4,36');
- a value of the wrong type is an error that says which type was expected.
The settings are the stage's globals of plain types (bool, int, float, str, list, tuple, None)
when it execs this file, so a stage defines nothing else of those types before it; the result
is also the dict `config`. The parsing is the pure function `apply_config`.
"""
import ast
import builtins
import difflib
import os
import sys
import types


class ConfigError(ValueError):
    pass


def _is_config_value(key, value):
    # ALL_CAPS module constants (TASKS = (...)) are not settings
    return not key.startswith('_') and not key.isupper() and isinstance(value, (bool, int, float, str, list, tuple, type(None)))


def _nearest(key, known):
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
    return f" (nearest known: {', '.join(close)})" if close else ""


def _coerce(key, value, default, where):
    """Check `value` against the type of `default`; promote int to float."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):  # bool before int: bool is a subclass of int
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} expects a bool (true/false), got {value!r}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    if type(value) is not type(default):
        raise ConfigError(f"{where}: {key} expects {type(default).__name__} like {default!r}, "
                          f"got {type(value).__name__} {value!r}")
    return value


def _parse_literal(text):
    if text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as --device=cuda is a string


def apply_config(argv, config):
    """Apply config files and --key=value overrides in `argv` to the dict `config`.
    Returns a new dict; raises ConfigError with a one-line message on any bad input."""
    config = dict(config)
    argv, joined = list(argv), []
    while argv:  # '--key value' is read as '--key=value' (python finetune.py --task clone)
        arg = argv.pop(0)
        if arg.startswith('--') and '=' not in arg and argv and not argv[0].startswith('--'):
            arg = f"{arg}={argv.pop(0)}"
        joined.append(arg)
    for arg in joined:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                raise ConfigError(f"config file {arg!r} not found (expected a path like config/mose_tiny.py "
                                  f"or an override like --key=value)")
            scope = dict(config)
            try:
                with open(arg) as f:
                    exec(builtins.compile(f.read(), arg, "exec"), scope)
            except Exception as e:  # a config file is user input: report it on one line
                line = getattr(e, 'lineno', None) or _traceback_line(e, arg)
                raise ConfigError(f"{arg}:{line}: {type(e).__name__}: {e}") from None
            for key, value in scope.items():
                if key.startswith('_') or isinstance(value, (types.ModuleType, types.FunctionType, type)):
                    continue
                if key not in config:
                    raise ConfigError(f"{arg}: unknown config key {key!r}{_nearest(key, config)}")
                config[key] = _coerce(key, value, config[key], arg)
        else:
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise ConfigError(f"argument {arg!r}: expected --key=value or --key value")
            if key not in config:
                raise ConfigError(f"argument {arg!r}: unknown config key {key!r}{_nearest(key, config)}")
            value = _parse_literal(text)
            if isinstance(config[key], str) and isinstance(value, (int, float, tuple, list)) and not isinstance(value, bool):
                value = text  # a string setting keeps what was typed: --exit 18 is '18'
            config[key] = _coerce(key, value, config[key], f"argument {arg!r}")
    return config


def _traceback_line(exc, filename):
    tb, line = exc.__traceback__, '?'
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


if __name__ != 'configurator':  # exec'd by a stage script: apply sys.argv to its globals
    _defaults = {_k: _v for _k, _v in globals().items() if _is_config_value(_k, _v)}
    if '--help' in sys.argv[1:] or '-h' in sys.argv[1:]:
        print(f"usage: python {sys.argv[0]} [config/file.py ...] [--key=value ...]\nkeys and defaults:")
        for _k, _v in _defaults.items():
            print(f"  --{_k}={_v!r}")
        sys.exit(0)
    try:
        _config = apply_config(sys.argv[1:], _defaults)
    except ConfigError as _e:
        sys.exit(f"error: {_e}")
    if int(os.environ.get('RANK', '0')) == 0:
        for _k, _v in _config.items():
            if _v != _defaults[_k] or type(_v) is not type(_defaults[_k]):
                print(f"config: {_k} = {_v!r}")
    globals().update(_config)
    config = _config
