-- One pgbench transaction of raw_claim_limit_per_s: claim a batch of queued jobs with
-- FOR UPDATE SKIP LOCKED, as a worker does, then finish them all. Plain SQL, run by
-- pgbench (C, libpq) from several clients at once, so the figure is the machine's
-- limit for a job queue in this database with no Python in the loop.
-- :batch is set by taskengine.bench (pgbench -D batch=N); :client_id is pgbench's own.
BEGIN;
WITH claimable AS (
    SELECT id FROM raw_job
    WHERE queue = 'raw' AND state = 'queued' AND run_after <= now()
    ORDER BY priority, run_after, id
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE raw_job AS job
    SET state = 'running', attempts = job.attempts + 1, worker_id = 'raw-' || :client_id,
        lease_expires_at = now() + interval '30 seconds'
    FROM claimable
    WHERE job.id = claimable.id
    RETURNING job.id
)
-- A quoted array literal ('{1,2,3}'): pgbench pastes the variable in as text.
SELECT coalesce(quote_literal(array_agg(id)::text), quote_literal('{}')) AS claimed_ids FROM claimed
\gset
UPDATE raw_job
SET state = 'succeeded', finished_at = now(), worker_id = NULL, lease_expires_at = NULL
WHERE id = ANY (:claimed_ids::bigint[]);
COMMIT;
