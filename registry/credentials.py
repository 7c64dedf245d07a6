"""The registry's own secrets: the admin token file, and database URLs fit to print.

A generated admin token lives in ``<data_dir>/admin_token`` (mode 0600), made once and
read by every worker and every later start; logs name the file, never the token.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["ADMIN_TOKEN_FILE", "load_or_create_admin_token", "redact", "redact_url"]

ADMIN_TOKEN_FILE = "admin_token"
_USERINFO = re.compile(r"(?P<head>://[^:/@\s]*):(?P<password>[^@\s]*)@")


def load_or_create_admin_token(path: Path) -> str:
    """The admin token stored at ``path``; when there is none, a new
    ``secrets.token_urlsafe(32)`` written there first (0600, atomically: processes racing
    to create it all end up with the first one written).

    Raises ``OSError`` when the file cannot be read or written, ``ValueError`` when it
    holds fewer than 8 characters.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".admin-token-")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process created it first
            os.link(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < 8:
        raise ValueError(f"admin token file {path} holds no token of at least 8 characters")
    return token


def redact_url(url: str) -> str:
    """``url`` with its password, if any, shown as ``***``; also when SQLAlchemy cannot
    parse it."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _USERINFO.sub(r"\g<head>:***@", url)


def redact(text: str, url: str) -> str:
    """``text`` (an error message, say) without ``url``'s password, in any spelling
    SQLAlchemy or a driver may echo: as written, or URL-decoded."""
    passwords = {m.group("password") for m in _USERINFO.finditer(url)}
    try:
        parsed = make_url(url).password
    except (ArgumentError, ValueError):
        parsed = None
    if parsed:
        passwords.add(str(parsed))
    for password in sorted((p for p in passwords if p), key=len, reverse=True):
        text = text.replace(password, "***")
    return _USERINFO.sub(r"\g<head>:***@", text)
