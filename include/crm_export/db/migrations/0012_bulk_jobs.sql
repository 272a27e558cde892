-- Bulk API 2.0 jobs of the backfill path, recorded before their data is
-- uploaded, so a task killed while Salesforce processes a job resumes by
-- polling it (state 'closed'), and a job never closed is aborted ('created',
-- 'uploaded'). after_position is the watermark the job starts after;
-- last_position its last record's position.

CREATE TABLE crm_export.bulk_jobs (
    job_id          text PRIMARY KEY,
    stream          text NOT NULL,
    run_id          text NOT NULL,
    state           text NOT NULL CHECK (state IN ('created', 'uploaded', 'closed', 'done', 'aborted', 'failed')),
    after_position  jsonb,
    last_position   jsonb NOT NULL,
    records         integer NOT NULL CHECK (records > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

CREATE INDEX bulk_jobs_unfinished ON crm_export.bulk_jobs (stream, created_at) WHERE finished_at IS NULL;

COMMENT ON TABLE crm_export.bulk_jobs IS
    'Bulk API 2.0 ingest jobs of the backfill path, so a killed task resumes its job instead of uploading again.';
