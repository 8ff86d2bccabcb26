-- The housekeeping condition before and after issue 16, on a table of 1,000,000 final commands.
-- Run: rm -f /tmp/hist.db* && sqlite3 /tmp/hist.db < benches/sql/sqlite_history_scan.sql
PRAGMA journal_mode=WAL;
CREATE TABLE bridge_queued_commands (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, device_id TEXT NOT NULL, command_type TEXT NOT NULL, payload BLOB NOT NULL, status TEXT NOT NULL, requires_confirmation INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, lease_until INTEGER, result_payload BLOB, result_error TEXT, device_type TEXT, timeout_ms INTEGER NOT NULL DEFAULT 10000, lease_token INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, queued_by TEXT NOT NULL DEFAULT 'backend');
CREATE INDEX bridge_queued_commands_open ON bridge_queued_commands (device_id, seq) WHERE status IN ('pending', 'awaiting_confirmation', 'delivering');
CREATE INDEX bridge_queued_commands_open_expiry ON bridge_queued_commands (expires_at) WHERE status IN ('pending', 'awaiting_confirmation', 'delivering');
CREATE INDEX bridge_queued_commands_open_lease ON bridge_queued_commands (lease_until) WHERE status IN ('pending', 'awaiting_confirmation', 'delivering');
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
INSERT INTO bridge_queued_commands (id, device_id, command_type, payload, status, requires_confirmation, attempts, created_at, expires_at)
SELECT 'hist-' || i, CASE WHEN i % 2 = 0 THEN 'bench-lock' ELSE 'dev-' || (i % 10000) END, 'unlock', x'01', CASE i % 4 WHEN 0 THEN 'succeeded' WHEN 1 THEN 'failed' WHEN 2 THEN 'expired' ELSE 'cancelled' END, 0, 1, 1000, 1000 + 86400000 FROM n;
.timer on
.print old (device 'bench-lock', ?1 IS NULL OR device_id = ?1)
SELECT COUNT(*) FROM bridge_queued_commands WHERE ('bench-lock' IS NULL OR device_id = 'bench-lock') AND expires_at <= 2000 AND (status IN ('pending', 'awaiting_confirmation') OR (status = 'delivering' AND lease_until <= 2000));
SELECT COUNT(*) FROM bridge_queued_commands WHERE device_id = 'bench-lock' AND status = 'pending' AND expires_at > 2000;
.print new
SELECT COUNT(*) FROM bridge_queued_commands WHERE device_id = 'bench-lock' AND status IN ('pending', 'awaiting_confirmation', 'delivering') AND status IN ('pending', 'awaiting_confirmation') AND expires_at <= 2000;
SELECT COUNT(*) FROM bridge_queued_commands WHERE device_id = 'bench-lock' AND status IN ('pending', 'awaiting_confirmation', 'delivering') AND status = 'pending' AND expires_at > 2000;
