"""How every command-line entry point speaks.

A user error (a bad value, missing or malformed data, an output path that cannot be written, a Hydra override
that does not compose) is ONE line on stderr, ``<prog>: error: <the problem>. Fix: <what to do>``, and exit code
2, raised before any model is loaded wherever the problem can be seen then. A traceback means a bug in the suite
(``HYDRA_FULL_ERROR=1`` shows the full traceback of a user error too, for every entry point).

The pieces: :func:`fail` (print the line, exit 2), :func:`user_errors` (a ``with`` block turning ConfigError and
the given exception types into :func:`fail`), :class:`ArgumentParser` (argparse whose usage errors are one line),
:func:`check_output_path` (a file or folder that cannot be created is a ConfigError), :func:`check_renderer` and
:func:`print_written` (a renderer's checks, and how it names what it wrote) and :func:`hydra_entry` (Hydra's own
composition errors as one line and exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterator, NoReturn

from lorafa_repro.errors import ConfigError

#: the exit code of a user error, for every entry point
USER_ERROR = 2


def full_error() -> bool:
    """``HYDRA_FULL_ERROR=1``: re-raise user errors with their traceback (Hydra's own switch, for every CLI)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def single_line(text: object) -> str:
    """``text`` with its lines joined by spaces (a message must never span lines)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def fail(prog: str, message: object) -> NoReturn:
    """Print ``<prog>: error: <message>`` as one line on stderr and exit with :data:`USER_ERROR`."""
    print(f"{prog}: error: {single_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR)


@contextlib.contextmanager
def user_errors(prog: str, *types: type[BaseException]) -> Iterator[None]:
    """ConfigError (and ``types``) raised inside become :func:`fail`; other exceptions pass (bugs)."""
    try:
        yield
    except (ConfigError, *types) as e:
        if full_error():
            raise
        fail(prog, e)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (argparse prints the usage, then the error, on two lines)."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, f"{message}. Fix: see {self.prog} --help")


def check_output_path(path: str | Path, what: str, *, folder: bool = False) -> None:
    """Raise ConfigError unless ``path`` (a file, or a folder with ``folder``) can be created or replaced: it is
    not the other kind of thing, and its nearest existing ancestor is a writable folder (not a regular file)."""
    p = Path(path)
    if p.exists() and p.is_dir() != folder:
        kind = "a folder" if p.is_dir() else "a regular file"
        raise ConfigError(f"{what} {p} is {kind}. Fix: pass a {'folder' if folder else 'file'} path for {what}")
    parent = p if folder and p.exists() else p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {p} cannot be created: {parent} is a regular file, not a folder. "
                          f"Fix: pick another {what}, outside {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {p} cannot be written: no write permission on {parent}. "
                          f"Fix: pick another {what}, in a folder you can write")


def check_renderer(prog: str, out: str | Path, found: bool, missing: str) -> None:
    """A renderer's checks before it renders: ``out`` must be a creatable folder, and with nothing ``found`` to
    render it stops with ``missing`` (the one line, with its Fix) instead of writing an empty table."""
    with user_errors(prog):
        check_output_path(out, "--out", folder=True)
    if not found:
        fail(prog, missing)


def print_written(*paths: str | Path) -> None:
    """Every renderer ends by naming the files it wrote, one ``wrote <path>`` line each."""
    for path in paths:
        print(f"wrote {path}")


# ------------------------------------------------------------------------------------------------ Hydra

def _from_the_suite(tb: TracebackType | None) -> bool:
    """Whether a frame of the suite (other than this module) is on the traceback: the task function ran."""
    while tb is not None:
        name = str(tb.tb_frame.f_globals.get("__name__", ""))
        if name.startswith("lorafa_repro.") and name != __name__:
            return True
        tb = tb.tb_next
    return False


def hydra_message(e: BaseException) -> str:
    """One line for a Hydra composition error: its first line, the cause's first line, the options and a Fix."""
    from hydra.errors import MissingConfigException, OverrideParseException

    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    head = lines[0].rstrip(".") if lines else type(e).__name__
    options, in_options = [], False
    for line in str(e).splitlines():  # the block after "Available options in '<group>':" (tab-indented names)
        if line.startswith("Available options"):
            in_options = True
        elif in_options and line.startswith("\t"):
            options.append(line.strip())
        elif in_options:
            break
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        head += f": {str(cause).strip().splitlines()[0]}"
    if isinstance(e, MissingConfigException) and options:
        return f"{head}. Fix: use one of {', '.join(options)}"
    if isinstance(e, OverrideParseException):
        return f"{head}. Fix: write overrides as key=value (quote values with spaces or brackets)"
    return (f"{head}. Fix: check the key's spelling and the value's type against docs/config.md "
            "(--cfg job prints the composed config)")


def _reraise(e: BaseException) -> NoReturn:
    raise e


def hydra_entry(app: Callable[..., Any], prog: str) -> Callable[..., Any]:
    """``app`` (a ``hydra.main``-decorated function) whose Hydra user errors (an unknown key or config option,
    a value of the wrong type, bad override syntax, an unknown flag) are one line and exit 2. An exception from
    the suite's own code keeps Hydra's report (a bug). Hydra exposes no hook for this, so its private
    ``run_and_report`` and the parser of ``hydra.main`` are wrapped while ``app`` runs (tests/test_bad_inputs.py
    pins the behaviour)."""
    import hydra._internal.utils as hydra_utils
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    hydra_main = sys.modules["hydra.main"]

    def run_and_report(func: Callable[[], Any]) -> Any:
        try:
            return func()
        except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs below
            user = isinstance(e, (HydraException, OmegaConfBaseException)) and not _from_the_suite(e.__traceback__)
            if full_error() or not user:
                return original_report(functools.partial(_reraise, e))
            fail(prog, hydra_message(e))

    def get_args_parser() -> argparse.ArgumentParser:
        parser = original_parser()
        parser.prog = prog
        parser.error = ArgumentParser.error.__get__(parser)  # type: ignore[method-assign]
        return parser

    original_report, original_parser = hydra_utils.run_and_report, hydra_main.get_args_parser

    @functools.wraps(app)
    def entry(*args: Any, **kwargs: Any) -> Any:
        hydra_utils.run_and_report, hydra_main.get_args_parser = run_and_report, get_args_parser
        try:
            return app(*args, **kwargs)
        finally:
            hydra_utils.run_and_report, hydra_main.get_args_parser = original_report, original_parser

    return entry
