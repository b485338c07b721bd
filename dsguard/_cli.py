"""What the command-line modules share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from .errors import DSGuardError


@contextlib.contextmanager
def operator_errors() -> Iterator[None]:
    """Errors of the files or the library, as one line naming the file (no traceback)."""
    try:
        yield
    except DSGuardError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or 'file'}: {exc.strerror or exc}") from None
