"""A real PostgreSQL server for the suites that need one (started once per session, as an
unprivileged user, on a private port; stopped by PID), and a fresh schema per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from vmmove.testing.pgserver import PostgresServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """A ``postgresql://`` journal URI of its own (a schema nobody else uses)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield pg_server.schema_dsn(schema)
    pg_server.drop_schema(schema)
