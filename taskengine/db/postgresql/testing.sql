-- Statements of the test helpers (taskengine.testing); never run by a worker.


-- name: testing_seconds_until_due
-- How far the claim's clock (now(), which stands still inside a test's transaction)
-- must move for the earliest queued job of these queues to be due; NULL: none queued.
-- Index: taskengine_job_claim_idx (queue, priority DESC, run_after, id) WHERE state='queued'.
SELECT EXTRACT(EPOCH FROM min(run_after) - now())::float8
  FROM taskengine_job
 WHERE state = 'queued'
   AND queue = ANY(%(queues)s);


-- name: testing_engine_now
-- The clock claims, leases and retries compare with: now(), the transaction's start
-- (db_now reads statement_timestamp(), which moves on inside a transaction).
SELECT now();
