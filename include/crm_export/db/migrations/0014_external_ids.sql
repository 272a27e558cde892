-- Which source row holds each external id a stream has confirmed in Salesforce
-- (as Salesforce matches it: lower-cased unless the field is case sensitive).
-- Two source rows with one external id are one Salesforce record; a later row
-- that would take an id another row still holds is a rejected record instead
-- of a silent overwrite, in whichever batch, job or run it comes.

CREATE TABLE crm_export.external_ids (
    stream      text NOT NULL,
    match_key   text NOT NULL,
    record_key  text NOT NULL,
    PRIMARY KEY (stream, match_key)
);

COMMENT ON TABLE crm_export.external_ids IS
    'The source row (record_key) that holds each external id a stream confirmed in Salesforce.';

