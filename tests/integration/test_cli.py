"""The troubleshooting command line, run as a data engineer runs it, against the same connections as the DAGs."""

from __future__ import annotations

import os
import subprocess
import sys

from devstack.stack import PROJECT_ROOT
from tests.support.helpers import insert_contacts, open_errors, salesforce_contacts, watermark

RULE = {
    "cause": "validation_rule",
    "object": "Contact",
    "when": {"field": "CRM_Contact_Id__c", "op": "eq", "value": "3"},
    "message": "Title must be set",
    "fields": ["Title"],
}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "include.crm_export", *args],
        cwd=PROJECT_ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_send_prints_the_exact_request_and_response_and_resolves_the_open_error(db, emulator, pause_variable):
    insert_contacts(db, 5)
    emulator.add_rule(**RULE)
    held = cli("export", "--stream", "contacts", "--pause-on-error", "true")
    assert held.returncode == 2, held.stderr[-2000:]
    assert "is held at record 3" in held.stdout
    assert [row["record_key"] for row in open_errors(db)] == ["3"]

    rejected = cli("send", "--stream", "contacts", "--key", "3")
    assert rejected.returncode == 1
    assert "PATCH composite/sobjects/Contact/CRM_Contact_Id__c" in rejected.stdout
    assert '"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION"' in rejected.stdout
    assert "Rejected: FIELD_CUSTOM_VALIDATION_EXCEPTION: Title must be set (fields: Title)" in rejected.stdout

    emulator.clear_rules()
    sent = cli("send", "--stream", "contacts", "--key", "3")
    assert sent.returncode == 0, sent.stdout + sent.stderr[-2000:]
    assert "HTTP 200" in sent.stdout
    assert '"success": true' in sent.stdout
    assert "Resolved the open ExportErrors row of record 3." in sent.stdout
    assert open_errors(db) == []
    assert salesforce_contacts(emulator)["3"]["LastName"] == "Last3"
    assert watermark(db)[1] == "3"  # send is a probe: the held export resumes at its own next run


def test_dry_runs_read_as_the_export_reads_and_send_nothing(db, emulator):
    insert_contacts(db, 3)
    next_batch = cli("export", "--stream", "contacts", "--dry-run")
    assert next_batch.returncode == 0, next_batch.stderr[-2000:]
    assert "Next batch of stream 'contacts': 3 record(s)" in next_batch.stdout
    one = cli("send", "--stream", "contacts", "--key", "2", "--dry-run")
    assert one.returncode == 0
    assert '"CRM_Contact_Id__c": "2"' in one.stdout
    assert "Dry run: nothing sent." in one.stdout
    assert emulator.records("Contact") == []
    assert cli("send", "--stream", "contacts", "--key", "99").stdout.startswith("No row with id = 99")
