"""The "CRM Export" page in the Airflow UI: a FastAPI app served by Airflow's API server (see plugins/)."""
