-- GET /v1/scans?device= matches a decision's device id or DNS name or its
-- job's machine id: an OR across two tables, which neither SQLite nor
-- PostgreSQL can answer from these two indexes, so the query walks
-- decisions_created newest first and they were never read. Each still cost
-- every decision two more index inserts at random places, the most
-- expensive part of an ingest after the alert row itself.
DROP INDEX decisions_device_id;
DROP INDEX decisions_device_dns;
