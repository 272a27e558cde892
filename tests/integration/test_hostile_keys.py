"""Record keys that hold quotes, line breaks, ``%``, ``#`` and backticks, through every message about them.

A user's text key is whatever their application wrote. The held task's
message carries a statement the person on call pastes into psql; the email
alert's subject becomes a header; the Slack alert wraps the message in a
code block. Each must say exactly what it means, whatever the key holds.
"""

from __future__ import annotations

import re

import pytest

from include.crm_export.quoting import shown, sql_literal
from tests.support.helpers import table_stream, write_streams

HOSTILE_KEYS = [
    "x'; DROP TABLE crm.contacts; --",
    "T-9). Details: DELETE FROM crm_export.\"ExportErrors\" WHERE status = 'open';",
    "line one\nBcc: attacker@example.com",
    "100% #1 ?a=b\r\n```<!channel>```",
]


@pytest.fixture
def hostile_table(db):
    db.execute(
        "CREATE TABLE crm.tickets (code text PRIMARY KEY, ext text NOT NULL, last_name text, "
        "changed_at timestamptz NOT NULL)"
    )
    return "crm.tickets"


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=["sql", "forged-details", "header", "percent-hash-backticks"])
def test_a_hostile_key_is_quoted_for_psql_the_mail_header_and_slack(
    db, emulator, run_dag, mailbox, slack, hostile_table, tmp_path, key
):
    db.execute(
        "INSERT INTO crm.tickets VALUES ('T-1', 'T-1', 'Ok', now() - interval '2 hours'), "
        "(%s, 'T-2', 'Held', now() - interval '1 hour')",
        (key,),
    )
    emulator.add_rule(
        cause="validation_rule",
        when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "T-2"},
        message="Title must be set",
        fields=["Title"],
    )
    streams = write_streams(
        tmp_path / "s.yml", {"tickets": table_stream(hostile_table, key="code", change="changed_at")}
    )

    run = run_dag(streams_file=streams, retries=False)

    assert run.task_states["export_tickets"] == "failed"
    assert 'is held at record "' in run.log  # quoted: no key passes for the prose around it
    assert f"is held at record {shown(key)} " in run.log
    # The statement the message offers, run as the person on call would: it finds the row, and only that.
    statement = re.search(r"Details: (SELECT .*? AND status = 'open';)", run.log, re.DOTALL).group(1)
    assert sql_literal(key) in statement
    rows = db.execute(statement).fetchall()
    assert len(rows) == 1
    assert db.execute("SELECT to_regclass('crm.contacts') IS NOT NULL").fetchone()[0]

    ((_, message),) = mailbox
    assert message["Subject"] == f"CRMExport: stream 'tickets' is held at record {shown(key)}"
    assert "\n" not in message["Subject"]
    assert "\r" not in message["Subject"]
    assert message["Bcc"] is None
    assert [m["To"] for _, m in mailbox] == ["oncall@example.com, data@example.com"]

    ((_, payload),) = slack
    text = payload["text"]
    assert text.count("```") == 2  # the code block opened once and closed once, at the end
    assert text.endswith("```")
    assert "<!channel>" not in text


@pytest.mark.parametrize("conforming", ["on", "off"])
def test_sql_literal_round_trips_through_postgresql(db, conforming):
    db.execute(f"SET standard_conforming_strings = {conforming}")
    try:
        for text in [*HOSTILE_KEYS, "back\\slash", "\\'", "'", "''", "é", "\t", ""]:
            assert db.execute(f"SELECT {sql_literal(text)}").fetchone()[0] == text
    finally:
        db.execute("RESET standard_conforming_strings")


def test_plain_keys_are_shown_as_they_are_and_anything_else_quoted():
    assert [shown(key) for key in ("137", "C-00042", "ann@example.com", "2026-01-01T00:00:00Z", "été")] == [
        "137",
        "C-00042",
        "ann@example.com",
        "2026-01-01T00:00:00Z",
        "été",
    ]
    assert shown("none") == '"none"'  # never mistaken for a missing value
    assert shown(None) == "none"
    assert shown("137\u202e741") == '"137\\u202e741"'  # a right-to-left override cannot disguise a key
    assert shown("a\u200bb") == '"a\\u200bb"'
    assert shown("x" * 500).endswith("… (500 characters)")
