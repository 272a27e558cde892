-- What the last notification about a stream said (ok, held:<record>, rejecting),
-- so a change of state is announced once, not on every run.

ALTER TABLE crm_export.stream_watermarks ADD COLUMN alert_state text NOT NULL DEFAULT 'ok';

COMMENT ON COLUMN crm_export.stream_watermarks.alert_state IS
    'The state the last notification announced: ok, held:<record key> or rejecting.';
