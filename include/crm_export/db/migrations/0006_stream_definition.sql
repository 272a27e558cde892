-- What a watermark is a position in. A watermark is only meaningful for the
-- stream definition it was taken under (source, key, order columns and their
-- types, object and external id); the export refuses to continue one whose
-- definition changed until someone re-positions the stream on purpose. Every
-- such re-positioning is recorded: who, when, from where, and why.

ALTER TABLE crm_export.stream_watermarks
    ADD COLUMN definition jsonb,
    ADD COLUMN repositioned_at timestamptz,
    ADD COLUMN repositioned_by text;

COMMENT ON COLUMN crm_export.stream_watermarks.definition IS
    'The stream definition the position belongs to (source, key, order columns with types, sobject, external id).';
COMMENT ON COLUMN crm_export.stream_watermarks.repositioned_by IS 'Who last re-positioned the stream, and from where.';

CREATE TABLE crm_export.stream_repositions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream          text NOT NULL,
    repositioned_at timestamptz NOT NULL DEFAULT now(),
    repositioned_by text NOT NULL,
    old_position    jsonb,
    new_position    jsonb,
    old_definition  jsonb,
    new_definition  jsonb NOT NULL,
    held_record_key text,
    reason          text
);

COMMENT ON TABLE crm_export.stream_repositions IS
    'Audit log: every deliberate reset or re-positioning of a stream watermark.';
