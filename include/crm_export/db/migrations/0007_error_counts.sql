-- Counts of ExportErrors by stream, status and error code for the CRM Export
-- page, without scanning the history: every statement that inserts, updates
-- or deletes ExportErrors rows appends its net change per (stream, status,
-- error_code) to export_error_count_deltas (statement-level triggers with
-- transition tables: one row per statement and group, no row ever updated, so
-- no lock contention), and runs fold the deltas into one row per group
-- (compact_export_error_counts). The page sums a small table.

CREATE TABLE crm_export.export_error_count_deltas (
    stream      text NOT NULL,
    status      text NOT NULL,
    error_code  text NOT NULL,
    delta       bigint NOT NULL
);

COMMENT ON TABLE crm_export.export_error_count_deltas IS
    'ExportErrors rows per (stream, status, error_code), as deltas: sum(delta) is the count.';

CREATE FUNCTION crm_export.count_export_errors_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO crm_export.export_error_count_deltas
    SELECT stream, status, error_code, count(*) FROM inserted GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;

CREATE FUNCTION crm_export.count_export_errors_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO crm_export.export_error_count_deltas
    SELECT stream, status, error_code, -count(*) FROM deleted GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;

CREATE FUNCTION crm_export.count_export_errors_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO crm_export.export_error_count_deltas
    SELECT stream, status, error_code, sum(delta) FROM (
        SELECT stream, status, error_code, 1 AS delta FROM after_update
        UNION ALL
        SELECT stream, status, error_code, -1 FROM before_update
    ) changes
    GROUP BY 1, 2, 3 HAVING sum(delta) <> 0;
    RETURN NULL;
END $$;

CREATE TRIGGER export_errors_count_inserts AFTER INSERT ON crm_export."ExportErrors"
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION crm_export.count_export_errors_inserted();
CREATE TRIGGER export_errors_count_deletes AFTER DELETE ON crm_export."ExportErrors"
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION crm_export.count_export_errors_deleted();
CREATE TRIGGER export_errors_count_updates AFTER UPDATE ON crm_export."ExportErrors"
    REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update
    FOR EACH STATEMENT EXECUTE FUNCTION crm_export.count_export_errors_updated();

CREATE FUNCTION crm_export.count_export_errors_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM crm_export.export_error_count_deltas;
    RETURN NULL;
END $$;

CREATE TRIGGER export_errors_count_truncates AFTER TRUNCATE ON crm_export."ExportErrors"
    FOR EACH STATEMENT EXECUTE FUNCTION crm_export.count_export_errors_truncated();

-- The rows already there.
INSERT INTO crm_export.export_error_count_deltas
SELECT stream, status, error_code, count(*) FROM crm_export."ExportErrors" GROUP BY 1, 2, 3;
