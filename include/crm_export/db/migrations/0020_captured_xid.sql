-- The transaction of each captured change: a change is read only once its transaction is visible to other
-- sessions (a commit waiting for a synchronous standby is decoded before it is).
ALTER TABLE crm_export.captured_changes ADD COLUMN xid bigint;
