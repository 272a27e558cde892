-- A Bulk API 2.0 job is an upsert of a run's records, or the delete job of the records of that upsert job that
-- are marked deleted (sent once the upsert job is done). A delete job a killed task left is aborted by the next
-- run before anything else is sent: its deletes are asked again, after the rows are read again.
ALTER TABLE crm_export.bulk_jobs ADD COLUMN operation text NOT NULL DEFAULT 'upsert';
