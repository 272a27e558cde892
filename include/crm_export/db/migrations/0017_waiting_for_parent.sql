-- The record a stream stopped before because its parent was not exported yet (parents.py), and since when:
-- a record that waits longer than a parent can take to arrive is reported as waiting for its parent
-- (a rejected record under the pause rules) instead of stopping its stream in silence.
ALTER TABLE crm_export.stream_watermarks ADD COLUMN waiting_record_key text;
ALTER TABLE crm_export.stream_watermarks ADD COLUMN waiting_since timestamptz;
