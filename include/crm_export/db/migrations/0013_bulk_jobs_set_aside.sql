-- A reposition sets the stream's unfinished Bulk API 2.0 jobs aside: they belong
-- to the old position and definition, so the next run aborts them instead of
-- resuming and counting them.
ALTER TABLE crm_export.bulk_jobs DROP CONSTRAINT bulk_jobs_state_check;
ALTER TABLE crm_export.bulk_jobs ADD CONSTRAINT bulk_jobs_state_check
    CHECK (state IN ('created', 'uploaded', 'closed', 'set aside', 'done', 'aborted', 'failed'));
