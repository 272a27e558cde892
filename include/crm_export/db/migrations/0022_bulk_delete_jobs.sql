-- A Bulk API 2.0 job is an upsert of a run's records, or the delete job of the records of that upsert job that
-- are marked deleted (sent once the upsert job is done). The next run deals with a delete job a killed task left
-- before anything else is sent (waited for, or aborted if never closed); its deletes are asked again.
ALTER TABLE crm_export.bulk_jobs ADD COLUMN operation text NOT NULL DEFAULT 'upsert';
