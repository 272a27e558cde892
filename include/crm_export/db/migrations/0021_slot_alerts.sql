-- What the last notification on each channel said about a replication slot of change capture (ok, or
-- retaining: the server keeps more WAL for it than alert_retained_wal_mb), so each change is announced once.
-- A slot has its own row, not its stream's: a slot no stream follows any more is the one that fills a disk.

CREATE TABLE crm_export.slot_alerts (
    slot          text NOT NULL,
    channel       text NOT NULL,
    state         text NOT NULL,
    announced_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, channel)
);

COMMENT ON TABLE crm_export.slot_alerts IS
    'Per replication slot and notification channel: the state its last notification announced (ok, retaining).';
