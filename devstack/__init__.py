"""The development stack of crm-export: never deployed, never imported by the product.

- ``emulator/``: the Salesforce API emulator (HTTPS on loopback);
- ``postgres.py``: an embedded PostgreSQL server (binaries from pgserver);
- ``stack.py``: both, wired for Airflow, for ``make run`` and the tests;
- ``__main__.py``: ``python -m devstack run``, the local run behind ``make run``;
- ``demo.py``, ``source_schema.sql``: the demo source tables and story;
- ``walkthrough.py``: the story driven through Airflow's REST API;
- ``compare.py``: Salesforce against the source, field by field.

Its dependencies are in requirements-dev.txt.
"""
