-- Statements of the test helpers (taskengine.testing); never run by a worker.


-- name: testing_seconds_until_due
-- How far the claim's clock must move for the earliest queued job of these queues to
-- be due; NULL: none queued.
-- Index: taskengine_job_claim_idx (queue, priority DESC, run_after, id) WHERE state='queued'.
SELECT (julianday(min(run_after)) - julianday('now')) * 86400.0
  FROM taskengine_job
 WHERE state = 'queued'
   AND queue IN (SELECT value FROM json_each(%(queues)s));


-- name: testing_engine_now
-- The clock claims, leases and retries compare with.
SELECT strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now');
