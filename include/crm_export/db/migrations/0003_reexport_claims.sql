-- Claims for the daily re-export (CRMExport_ExportError): a run leases the
-- rows it is working on, so two runs at once never send the same record.
-- A lease that outlives a killed worker simply expires.

ALTER TABLE crm_export."ExportErrors"
    ADD COLUMN claimed_by text,
    ADD COLUMN claimed_until timestamptz;

COMMENT ON COLUMN crm_export."ExportErrors".claimed_by IS 'The re-export run working on this row right now, if any.';
COMMENT ON COLUMN crm_export."ExportErrors".claimed_until IS 'When that claim lapses (a killed run does not block the row for long).';

-- Serves the re-export's pick per stream: open rows of one stream, least
-- recently attempted first. Partial, so resolved history does not make it
-- bigger or slower.
CREATE INDEX export_errors_open_by_stream_and_last_attempt
    ON crm_export."ExportErrors" (stream, last_attempt_at, id)
    WHERE status = 'open';

DROP INDEX crm_export.export_errors_open_by_last_attempt;
