"""Demo data and settings for the local run: the story a newcomer sees first.

On the first start: source tables with forty accounts, a few hundred contacts
(each at an account) and subscriptions (each for a contact before the first
held one), and a Salesforce validation rule that three of the contacts break,
so the first CRMExport run is held at a record, exactly as it would be in an
org with a strict rule. Later starts keep whatever is there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg

from devstack.airflow_api import AirflowApi
from devstack.emulator.process import EmulatorAdmin
from include.crm_export.names import PAUSE_ON_ERROR_VARIABLE
from include.crm_export.pause_variable import PAUSE_ON_ERROR_DESCRIPTION

log = logging.getLogger(__name__)

SOURCE_SCHEMA_SQL = Path(__file__).with_name("source_schema.sql")
BLOCKED_DOMAIN = "@blocked.example"

VALIDATION_RULE = {
    "cause": "validation_rule",
    "object": "Contact",
    "name": "Block_Disposable_Domains",
    "when": {"field": "Email", "op": "endswith", "value": BLOCKED_DOMAIN},
    "message": "Email addresses at blocked.example are not allowed (validation rule Block_Disposable_Domains)",
    "fields": ["Email"],
}


def seed_source(conn: psycopg.Connection, *, accounts: int = 40, contacts: int = 500, subscriptions: int = 150) -> bool:
    """Create the source tables; fill them on the first start. Returns whether it filled them."""
    conn.execute(SOURCE_SCHEMA_SQL.read_text())
    if conn.execute("SELECT EXISTS (SELECT 1 FROM crm.contacts)").fetchone()[0]:
        return False
    with conn.transaction():
        conn.execute(
            """INSERT INTO crm.accounts (name, industry, website, phone, city, country, employees, annual_revenue,
                                         updated_at)
               SELECT (ARRAY['Acme', 'Globex', 'Initech', 'Umbrella', 'Hooli'])[1 + g %% 5] || ' ' || g,
                      (ARRAY['Technology', 'Retail', 'Banking', 'Healthcare', 'Manufacturing'])[1 + g %% 5],
                      'https://account' || g || '.example.com',
                      '+1 555 02' || lpad(g::text, 4, '0'),
                      (ARRAY['Oslo','Lisbon','Toronto','Nairobi','Osaka'])[1 + g %% 5],
                      (ARRAY['Norway','Portugal','Canada','Kenya','Japan'])[1 + g %% 5],
                      10 * g, 250000 * g,
                      now() - interval '3 hours' + g * interval '1 second'
               FROM generate_series(1, %(n)s) g""",
            {"n": accounts},
        )
        conn.execute(
            """INSERT INTO crm.contacts (first_name, last_name, email, phone, title, department, birthdate,
                                         lead_source, opted_out_of_email, city, country, lifetime_value,
                                         last_activity_at, account_id, updated_at)
               SELECT (ARRAY['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken',
                             'Margaret', 'Linus'])[1 + g %% 10],
                      (ARRAY['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen', 'Thompson',
                             'Hamilton', 'Torvalds'])[1 + (g / 10) %% 10] || ' ' || g,
                      CASE WHEN g IN (137, 280, 411) THEN 'contact' || g || %(blocked)s
                           ELSE 'contact' || g || '@example.com' END,
                      '+1 555 01' || lpad(g::text, 4, '0'),
                      (ARRAY['Data Engineer','Analyst','CTO','Head of Sales','Marketing Lead'])[1 + g %% 5],
                      (ARRAY['Engineering','Finance','Sales','Marketing'])[1 + g %% 4],
                      DATE '1970-01-01' + (g * 37) %% 12000,
                      (ARRAY['Web','Phone Inquiry','Partner Referral','Other'])[1 + g %% 4],
                      g %% 11 = 0,
                      (ARRAY['Oslo','Lisbon','Toronto','Nairobi','Osaka'])[1 + g %% 5],
                      (ARRAY['Norway','Portugal','Canada','Kenya','Japan'])[1 + g %% 5],
                      round((g * 13.37)::numeric, 2),
                      now() - g * interval '1 hour',
                      1 + g %% %(accounts)s,
                      now() - interval '2 hours' + g * interval '1 second'
               FROM generate_series(1, %(n)s) g""",
            {"n": contacts, "blocked": BLOCKED_DOMAIN, "accounts": accounts},
        )
        conn.execute(
            """INSERT INTO crm.subscriptions (name, contact_email, contact_id, plan, status, seats, monthly_amount,
                                              started_on, renews_on, auto_renew, notes, updated_at)
               SELECT 'SUB-' || lpad(g::text, 5, '0'), 'contact' || (1 + g %% 130) || '@example.com', 1 + g %% 130,
                      (ARRAY['Starter','Team','Business','Enterprise'])[1 + g %% 4],
                      (ARRAY['Trial','Active','Active','Past Due'])[1 + g %% 4],
                      1 + g %% 50, round((49 + g %% 50 * 10)::numeric, 2),
                      DATE '2025-01-01' + g, DATE '2026-01-01' + g, g %% 3 <> 0, NULL,
                      now() - interval '2 hours' + g * interval '1 second'
               FROM generate_series(1, %(n)s) g""",
            {"n": subscriptions},
        )
    log.info(
        "Seeded %d demo accounts, %d contacts (3 break a Salesforce validation rule) and %d subscriptions",
        accounts,
        contacts,
        subscriptions,
    )
    return True


def seed_salesforce(admin: EmulatorAdmin) -> None:
    """The validation rule the demo contacts at blocked.example break (once; the emulator keeps it)."""
    if not any(rule.get("name") == VALIDATION_RULE["name"] for rule in admin.rules()):
        admin.add_rule(**VALIDATION_RULE)
        log.info("Added the Salesforce validation rule %s in the emulator", VALIDATION_RULE["name"])


def configure_airflow(api: AirflowApi) -> None:
    """The pause Variable (kept if it exists) and CRMExport switched on."""
    existing = api.get_variable(PAUSE_ON_ERROR_VARIABLE)
    if existing is None:
        api.set_variable(PAUSE_ON_ERROR_VARIABLE, "true", description=PAUSE_ON_ERROR_DESCRIPTION)
        log.info("Created the Variable %s = true", PAUSE_ON_ERROR_VARIABLE)
    api.wait_for_dags(["CRMExport", "CRMExport_ExportError"])
    api.set_paused("CRMExport", False)
