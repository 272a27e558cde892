-- The streams whose external_ids were filled from their source once (on the
-- first run after the upgrade that brought this table, or a new stream's first
-- run): rows exported before it hold their external ids too.
CREATE TABLE crm_export.external_ids_filled (
    stream     text PRIMARY KEY,
    filled_at  timestamptz NOT NULL DEFAULT now(),
    rows       bigint NOT NULL
);
