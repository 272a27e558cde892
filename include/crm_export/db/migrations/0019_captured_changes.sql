-- Change capture through logical decoding (capture: logical, include/crm_export/db/capture.py).
--
-- Each run moves its stream's replication slot's changes here and then advances the slot, so the slot (and
-- the WAL PostgreSQL keeps for it) lags at most one run, while a held stream's changes wait here as keys:
-- one row per row change, in commit order (commit_lsn, then seq within the transaction).
CREATE TABLE crm_export.captured_changes (
    stream       text NOT NULL,
    commit_lsn   pg_lsn NOT NULL,
    seq          integer NOT NULL,
    record_key   text NOT NULL,             -- the row's key, as text
    operation    "char" NOT NULL CHECK (operation IN ('U', 'D', 'T')),  -- upsert (current row), delete, truncate
    external_id  text,                      -- of a delete: the external id the deleted row had
    PRIMARY KEY (stream, commit_lsn, seq)
);

COMMENT ON TABLE crm_export.captured_changes IS
    'Row changes of capture: logical streams, moved from their replication slots, waiting to be exported.';

-- Per capture stream: its slot, and how far the slot's changes have been moved here. A slot whose position is
-- past that was consumed or made anew by someone else: changes in between may be lost, so the stream stops.
CREATE TABLE crm_export.capture_slots (
    stream      text PRIMARY KEY,
    slot_name   text NOT NULL UNIQUE,
    moved_upto  pg_lsn NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
