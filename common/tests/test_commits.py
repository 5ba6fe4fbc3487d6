"""ASYNC_COMMIT turns the disk wait off for its own transaction only: a later commit on the same connection (a
step's checkpoint) must still wait for the disk."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from common.commits import ASYNC_COMMIT

pytestmark = pytest.mark.django_db(transaction=True)


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


def test_an_autocommit_statement_with_it_leaves_the_connections_next_commits_synchronous():
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 WHERE {ASYNC_COMMIT} = 'off'")
        assert cursor.fetchone() == (1,)
    assert _synchronous_commit() == "on"


def test_inside_a_transaction_it_holds_until_that_transaction_ends():
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {ASYNC_COMMIT}")
        assert _synchronous_commit() == "off"
    assert _synchronous_commit() == "on"
