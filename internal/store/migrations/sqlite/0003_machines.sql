-- One machine, one scan, whatever it is called (issue #15). A device is
-- decided under the name an alert gives it; once the dispatcher resolves
-- it to a Defender machine id, the job's machine_id is checked against
-- every other open job and the machine's cooldown clock ("id:" device
-- row). jobs_machine answers "does this machine have an open job" and
-- "every name this machine was known by".
CREATE INDEX jobs_machine ON jobs (machine_id, open) WHERE machine_id <> '';

-- A device named only by an internal IP address, and the time the alert
-- saw it (Defender's findbyip matches machines seen with the IP within
-- 15 minutes of a timestamp); 0: none.
ALTER TABLE jobs ADD COLUMN device_ip TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN device_ip_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE decisions ADD COLUMN device_ip TEXT NOT NULL DEFAULT '';

-- Resolved names (dns:, aad:, ip:<ip>@<15-minute slot>) with the machine id
-- and when they were resolved, shared by replicas so that repeat alerts do
-- not spend Defender's lookup budget; read only while younger than the
-- dispatcher's resolve TTL.
CREATE TABLE machine_names (
    name        TEXT PRIMARY KEY,
    machine_id  TEXT NOT NULL,
    resolved_at INTEGER NOT NULL
);
CREATE INDEX machine_names_machine ON machine_names (machine_id);
