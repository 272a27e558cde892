-- Watermarks and the ExportErrors table.
--
-- One row per stream in stream_watermarks: the position (ordering-column
-- values, as a JSON array of text) of the last record that is safely in
-- Salesforce. With pause on, held_record_key names the record the stream is
-- held at.

CREATE TABLE crm_export.stream_watermarks (
    stream              text PRIMARY KEY,
    position            jsonb,
    held_record_key     text,
    held_since          timestamptz,
    last_run_id         text,
    last_run_at         timestamptz,
    records_exported    bigint NOT NULL DEFAULT 0,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE crm_export.stream_watermarks IS
    'Per export stream: position of the last record safely in Salesforce, and the record it is held at (pause on).';

CREATE TABLE crm_export."ExportErrors" (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream              text NOT NULL,
    sobject             text NOT NULL,
    record_key          text NOT NULL,
    external_id         text,
    error_code          text NOT NULL,
    error_message       text NOT NULL,
    error_fields        text[] NOT NULL DEFAULT '{}',
    payload             jsonb,
    status              text NOT NULL DEFAULT 'open',
    attempts            integer NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    first_failed_at     timestamptz NOT NULL DEFAULT now(),
    last_failed_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at         timestamptz,
    resolved_by         text,
    dag_id              text,
    run_id              text,
    CONSTRAINT export_errors_status_known
        CHECK (status IN ('open', 'resolved', 'source_deleted')),
    CONSTRAINT export_errors_resolution_consistent
        CHECK ((status = 'open') = (resolved_at IS NULL))
);

-- One open row per stream and record: a record that keeps failing updates its
-- row (attempts, last error) instead of adding one per run.
CREATE UNIQUE INDEX export_errors_one_open_per_record
    ON crm_export."ExportErrors" (stream, record_key)
    WHERE status = 'open';

COMMENT ON TABLE crm_export."ExportErrors" IS
    'Record-level Salesforce export errors: one open row per stream and record; resolved rows are kept as history.';
COMMENT ON COLUMN crm_export."ExportErrors".record_key IS 'Source primary key of the record, as text.';
COMMENT ON COLUMN crm_export."ExportErrors".payload IS 'The payload last sent to Salesforce for this record.';
COMMENT ON COLUMN crm_export."ExportErrors".status IS 'open, resolved (went through later) or source_deleted (source row gone, closed).';
COMMENT ON COLUMN crm_export."ExportErrors".resolved_by IS 'The DAG that resolved or closed the row (CRMExport or CRMExport_ExportError).';
COMMENT ON COLUMN crm_export."ExportErrors".run_id IS 'The Airflow run that last logged this error.';
