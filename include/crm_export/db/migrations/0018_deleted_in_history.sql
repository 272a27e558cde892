-- Runs count the records they deleted in Salesforce (a stream's deletes) beside those they wrote.
ALTER TABLE crm_export.export_runs ADD COLUMN deleted bigint NOT NULL DEFAULT 0;
