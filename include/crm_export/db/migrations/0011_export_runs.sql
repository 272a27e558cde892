-- Run history: one row per export run and stream, for the CRM Export page's
-- charts and its table of recent runs. Kept run_history_days (a stream
-- setting, default 90); older rows are pruned by the stream's next run.

CREATE TABLE crm_export.export_runs (
    id                  bigserial PRIMARY KEY,
    stream              text NOT NULL,
    dag_id              text NOT NULL,
    run_id              text NOT NULL,
    started_at          timestamptz NOT NULL,
    finished_at         timestamptz NOT NULL DEFAULT now(),
    exported            integer NOT NULL CHECK (exported >= 0),
    rejected            integer NOT NULL CHECK (rejected >= 0),
    rejected_by_code    jsonb NOT NULL DEFAULT '{}',
    pause_on_error      boolean NOT NULL,
    in_flight           integer NOT NULL DEFAULT 1,
    outcome             text NOT NULL CHECK (outcome IN ('success', 'held', 'failed')),
    stopped_because     text NOT NULL,
    held_record_key     text,
    lag_rows            bigint,
    lag_exact           boolean,
    open_errors_by_code jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX export_runs_by_stream_and_time ON crm_export.export_runs (stream, finished_at);
CREATE INDEX export_runs_by_time ON crm_export.export_runs (finished_at);

COMMENT ON TABLE crm_export.export_runs IS
    'One row per export run and stream: what it exported and rejected (by Salesforce error code), in which mode, '
    'why it stopped, and the open ExportErrors by code when it ended. Kept run_history_days.';
