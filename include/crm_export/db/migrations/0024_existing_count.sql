-- Records an insert-mode run left alone because Salesforce has them already (write_modes.py): not sent, and
-- counted apart from the unchanged, whose payload Salesforce holds exactly.
ALTER TABLE crm_export.export_runs ADD COLUMN existing integer NOT NULL DEFAULT 0 CHECK (existing >= 0);
