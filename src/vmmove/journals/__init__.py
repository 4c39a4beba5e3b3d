"""Which journal keeps the records: the SQLite file (:mod:`vmmove.journal`, the default) or
PostgreSQL (:mod:`vmmove.journals.postgres`, for several workers on several machines).

``VMMOVE_JOURNAL``, the config file's ``journal`` key or ``connect(journal=...)`` name it:
a path is a SQLite file, a ``postgresql://`` (or ``postgres://``) URI is a database. psycopg
is imported only when a PostgreSQL journal is opened.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from vmmove.errors import InvalidInput

if TYPE_CHECKING:
    from vmmove.journal import Journal
    from vmmove.journals.postgres import PgJournal

__all__ = ["is_postgres", "journal_spec", "open_journal", "redact_dsn"]

_SCHEMES = ("postgresql", "postgres")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def is_postgres(spec: str | None) -> bool:
    if not spec:
        return False
    return spec.split(":", 1)[0].lower() in _SCHEMES or (
        "=" in spec and "dbname" in spec and "://" not in spec
    )


def redact_dsn(dsn: str) -> str:
    """The DSN with any password masked (URI userinfo, ``?password=``, ``password=`` keyword)."""
    if "://" not in dsn:
        return _KEYWORD_PASSWORD.sub(r"\1***", dsn)
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.split(':', 1)[0]}:***@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs])
        return parts._replace(netloc=netloc, query=query).geturl()
    except ValueError:
        return "<malformed journal URI>"


def scrub(text: str, dsn: str) -> str:
    """``text`` (a driver's message) with the DSN's password removed wherever it appears."""
    try:
        password = urlsplit(dsn).password if "://" in dsn else None
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
    return _KEYWORD_PASSWORD.sub(r"\1***", text)


def journal_spec(explicit: str | None = None) -> str | None:
    """``explicit``, else ``$VMMOVE_JOURNAL`` (``None``: the default SQLite file)."""
    return explicit or os.environ.get("VMMOVE_JOURNAL") or None


def open_journal(spec: str | None = None, **options: Any) -> Journal | PgJournal:
    """The journal named by ``spec`` (see :func:`journal_spec`)."""
    spec = journal_spec(spec)
    if is_postgres(spec):
        assert spec is not None
        from vmmove.journals.postgres import PgJournal  # noqa: PLC0415 (psycopg on demand)

        return PgJournal(spec, **options)
    if options:
        raise InvalidInput(f"options {', '.join(sorted(options))} are for a PostgreSQL journal")
    from vmmove.journal import Journal  # noqa: PLC0415

    return Journal(spec)
