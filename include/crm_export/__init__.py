"""crm-export: export CRM records from PostgreSQL to Salesforce, batch by batch.

Pure modules (settings, ordering, classification, mapping) import neither
Airflow nor a database driver; the PostgreSQL and Salesforce edges live in
``db`` and ``salesforce``; ``emulator`` is the local Salesforce API stand-in.
"""

SCHEMA = "crm_export"
