-- What the last notification on each channel (email, slack) said about a
-- stream, so each channel announces a change of state once, and a channel that
-- failed to deliver tries again on the next run without repeating the others.
-- The single column of 0009 becomes the email channel's state.

CREATE TABLE crm_export.stream_alerts (
    stream        text NOT NULL,
    channel       text NOT NULL,
    state         text NOT NULL,
    announced_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, channel)
);

INSERT INTO crm_export.stream_alerts (stream, channel, state)
SELECT stream, 'email', alert_state FROM crm_export.stream_watermarks WHERE alert_state <> 'ok';

ALTER TABLE crm_export.stream_watermarks DROP COLUMN alert_state;

COMMENT ON TABLE crm_export.stream_alerts IS
    'Per stream and notification channel: the state its last notification announced (ok, held:<record key>, rejecting).';
