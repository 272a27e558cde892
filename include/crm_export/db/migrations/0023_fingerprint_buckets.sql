-- Fingerprints packed in buckets (include/crm_export/db/fingerprints.py): one row per stream and 16-bit prefix
-- of the record key's hash, holding the fingerprint of each record whose key falls there. One row per record
-- cost about 75 MB per million records (a 24-byte row header, a line pointer and an index entry around 16 bytes
-- of data); packed, a million take about 20 MB. A fingerprint also hashes another text now (fingerprints.py):
-- those written before (0.2.0 development builds only) would never match, so they are not carried over; a
-- record is sent once more the next time it is read.
DROP TABLE crm_export.fingerprints;

CREATE TABLE crm_export.fingerprints (
    bucket        bigint PRIMARY KEY,   -- a record's slot >> 32: the stream's number, then the key hash's top bits
    suffixes      integer[] NOT NULL,   -- each record's slot, low 32 bits (less 2^31, to fit an integer)
    fingerprints  bigint[] NOT NULL     -- each record's fingerprint, in the order of suffixes
)
-- A bucket stays in its row up to a page (about 680 records); each commit rewrites the buckets of its records, so
-- pages keep room for the new versions (HOT updates: no index entry each time).
WITH (toast_tuple_target = 8160, fillfactor = 80);
-- A bucket larger than a page goes out of line as it is: hashes do not compress, so trying costs CPU for nothing.
ALTER TABLE crm_export.fingerprints ALTER COLUMN suffixes SET STORAGE EXTERNAL,
                                    ALTER COLUMN fingerprints SET STORAGE EXTERNAL;

COMMENT ON TABLE crm_export.fingerprints IS
    'Hashes of the payloads Salesforce last confirmed, packed by stream and record key hash prefix (bucket).';
