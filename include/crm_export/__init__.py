"""crm-export: export CRM records from PostgreSQL to Salesforce, batch by batch.

Only what runs inside Airflow lives here; the local stack (Salesforce
emulator, embedded PostgreSQL, demo, walk-through) is the top-level
``devstack`` package and is never deployed. The layers, from the inside out:

- pure (no Airflow, no driver, no HTTP): ``names``, ``errors``, ``settings``,
  ``config``, ``mapping``, ``batch``, ``decisions``;
- edges: ``db`` (PostgreSQL through the provider's PostgresHook) and
  ``salesforce`` (simple-salesforce through the provider's SalesforceHook);
- engines: ``export`` (CRMExport) and ``reexport`` (CRMExport_ExportError);
- entry points: ``tasks`` (DAG task bodies), ``ui`` (the CRM Export page),
  ``__main__`` (the command line).
"""

__version__ = "0.2.0.dev0"
