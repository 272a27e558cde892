-- Horizon samples: each export run records the instant no writer still open
-- could have started before. A transaction prepared for two-phase commit
-- (PREPARE TRANSACTION) leaves pg_stat_activity, so its start is unknown; the
-- newest sample taken before it was prepared bounds it, and the export reads
-- no further. Kept for seven days.

CREATE TABLE crm_export.horizon_samples (
    stream      text NOT NULL,
    taken_at    timestamptz NOT NULL,
    bound       timestamptz NOT NULL
);

CREATE INDEX horizon_samples_by_time ON crm_export.horizon_samples (taken_at);

COMMENT ON TABLE crm_export.horizon_samples IS
    'Per export run: the instant no open writer could have started before (bounds prepared transactions).';
