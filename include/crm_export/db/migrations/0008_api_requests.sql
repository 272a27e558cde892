-- Salesforce API requests crm-export itself made, per run and stream, so the
-- export stays within its own daily budget (daily_api_requests, a rolling 24
-- hours across every stream and the re-export). Rows older than two days are
-- pruned as new ones arrive.

CREATE TABLE crm_export.api_requests (
    stream      text NOT NULL,
    run_id      text NOT NULL,
    counted_at  timestamptz NOT NULL DEFAULT now(),
    requests    integer NOT NULL CHECK (requests >= 0)
);

CREATE INDEX api_requests_by_time ON crm_export.api_requests (counted_at);

COMMENT ON TABLE crm_export.api_requests IS
    'Salesforce API requests crm-export made (per run and stream), for its rolling 24-hour budget.';
