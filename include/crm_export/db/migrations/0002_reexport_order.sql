-- The daily re-export picks open rows least recently attempted first, so rows
-- that fail day after day do not starve the others. last_attempt_at is when a
-- run last tried the record (failed or not); existing rows take their last
-- failure time.

ALTER TABLE crm_export."ExportErrors" ADD COLUMN last_attempt_at timestamptz;
UPDATE crm_export."ExportErrors" SET last_attempt_at = last_failed_at;
ALTER TABLE crm_export."ExportErrors"
    ALTER COLUMN last_attempt_at SET NOT NULL,
    ALTER COLUMN last_attempt_at SET DEFAULT now();

-- Serves the re-export's pick: open rows only, in attempt order, so its cost
-- does not grow with the resolved history.
CREATE INDEX export_errors_open_by_last_attempt
    ON crm_export."ExportErrors" (last_attempt_at, id)
    WHERE status = 'open';

COMMENT ON COLUMN crm_export."ExportErrors".last_attempt_at IS 'When an export or re-export last tried this record.';
