-- For the CRM Export page in the Airflow UI: records exported by a stream's
-- last run, and an index that pages through ExportErrors oldest first by
-- status without scanning the resolved history.

ALTER TABLE crm_export.stream_watermarks ADD COLUMN last_run_exported bigint NOT NULL DEFAULT 0;

COMMENT ON COLUMN crm_export.stream_watermarks.last_run_exported IS 'Records the last run exported.';

CREATE INDEX export_errors_by_status_and_age
    ON crm_export."ExportErrors" (status, first_failed_at, id);
