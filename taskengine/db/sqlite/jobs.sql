-- Job lifecycle queries for SQLite, the embedded single-writer default. The same
-- compare-and-set rules as jobs.postgresql.sql; the engine runs each batch inside one
-- BEGIN IMMEDIATE transaction, so only one writer claims at a time. The database clock
-- is strftime('%Y-%m-%d %H:%M:%f', 'now') (UTC, Django's storage format); '%%' is a
-- literal '%' because parameters use the pyformat style.


-- name: insert_job
INSERT INTO taskengine_job (
    task_path, backend, queue, priority, args, kwargs, state, run_after, enqueued_at,
    attempts, max_attempts, timeout_seconds, retry_backoff_seconds, on_lease_expired,
    unique_key, tenant, acting_user_id, concurrency_key, concurrency_limit
)
VALUES (
    %(task_path)s, %(backend)s, %(queue)s, %(priority)s, %(args)s, %(kwargs)s, 'queued',
    COALESCE(%(run_after)s, strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')),
    strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'),
    0, %(max_attempts)s, %(timeout_seconds)s, %(retry_backoff_seconds)s, %(on_lease_expired)s,
    %(unique_key)s, %(tenant)s, %(acting_user_id)s, %(concurrency_key)s, %(concurrency_limit)s
)
ON CONFLICT (unique_key) WHERE state IN ('queued', 'running') AND unique_key IS NOT NULL DO NOTHING
RETURNING id, unique_key, enqueued_at, run_after;


-- name: claim_jobs
-- Index: taskengine_job_claim_idx. Paused queues (taskengine_queue.paused) are dropped
-- from the wanted list once per claim; the claim's BEGIN IMMEDIATE transaction orders
-- it after any committed pause. Limited queues and keyed jobs are left to the limited
-- claim (taskengine.limits, limits.sqlite.sql).
UPDATE taskengine_job
   SET state = 'running',
       attempts = attempts + 1,
       locked_by = %(worker_id)s,
       lease_expires_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '+' || %(lease_seconds)s || ' seconds'),
       started_at = COALESCE(started_at, strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')),
       last_attempted_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
 WHERE id IN (
        SELECT id FROM taskengine_job
         WHERE state = 'queued'
           AND queue IN (SELECT value FROM json_each(%(queues)s)
                          WHERE value NOT IN (SELECT name FROM taskengine_queue
                                               WHERE paused OR concurrency_limit IS NOT NULL
                                                  OR rate_limit IS NOT NULL))
           AND concurrency_key IS NULL
           AND run_after <= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
         ORDER BY priority DESC, run_after, id
         LIMIT %(limit)s
       )
   AND state = 'queued'
RETURNING id, task_path, backend, queue, priority, args, kwargs, attempts, max_attempts,
          timeout_seconds, retry_backoff_seconds, enqueued_at, started_at,
          last_attempted_at, run_after, tenant, acting_user_id, on_lease_expired, unique_key;


-- name: log_attempts
-- The execution log rows of the attempts claim_jobs just started (same transaction).
INSERT INTO task_execution_logs (job_id, attempt, worker_id, started_at, error_message,
                                 traceback, user_id, user_id_str)
SELECT id, attempts, locked_by, last_attempted_at, '', '',
       CASE WHEN acting_user_id GLOB '[0-9]*' AND acting_user_id NOT GLOB '*[^0-9]*'
                 AND length(acting_user_id) <= 18
            THEN CAST(acting_user_id AS INTEGER) END,
       acting_user_id
  FROM taskengine_job
 WHERE id IN (SELECT value FROM json_each(%(ids)s))
   AND state = 'running'
   AND locked_by = %(worker_id)s;


-- name: extend_leases
UPDATE taskengine_job
   SET lease_expires_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '+' || %(lease_seconds)s || ' seconds')
 WHERE id = %(id)s
   AND attempts = %(attempt)s
   AND state = 'running'
   AND locked_by = %(worker_id)s
   AND lease_expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
-- The column itself: SQLite 3.40 evaluates "x IS NOT NULL" in RETURNING wrongly.
RETURNING id, cancel_requested_at;


-- name: finish_job
-- Fenced completion of one attempt (the engine batches these in one transaction).
UPDATE taskengine_job
   SET state = CASE WHEN %(next_state)s = 'queued' AND cancel_requested_at IS NOT NULL
                    THEN 'cancelled' ELSE %(next_state)s END,
       finished_at = CASE WHEN %(next_state)s = 'queued' AND cancel_requested_at IS NULL
                          THEN NULL ELSE strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now') END,
       run_after = CASE WHEN %(next_state)s = 'queued' AND cancel_requested_at IS NULL
                        THEN strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '+' || %(retry_delay)s || ' seconds')
                        ELSE run_after END,
       return_value = %(return_value)s,
       locked_by = NULL,
       lease_expires_at = NULL
 WHERE id = %(id)s
   AND attempts = %(attempt)s
   AND state = 'running'
   AND locked_by = %(worker_id)s
   AND lease_expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
RETURNING id, state, finished_at;


-- name: finish_attempt_log
UPDATE task_execution_logs
   SET finished_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'),
       outcome = %(outcome)s,
       error_class = %(error_class)s,
       error_message = %(error_message)s,
       traceback = %(traceback)s
 WHERE job_id = %(id)s AND attempt = %(attempt)s;


-- name: release_job
-- Graceful shutdown; see release_jobs in jobs.postgresql.sql: a job whose cancellation
-- was requested ends cancelled instead of going back to the queue.
UPDATE taskengine_job
   SET state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE 'queued' END,
       finished_at = CASE WHEN cancel_requested_at IS NOT NULL
                          THEN strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now') END,
       run_after = CASE WHEN cancel_requested_at IS NOT NULL
                        THEN run_after ELSE strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now') END,
       max_attempts = CASE WHEN cancel_requested_at IS NOT NULL THEN max_attempts ELSE max_attempts + 1 END,
       locked_by = NULL,
       lease_expires_at = NULL
 WHERE id = %(id)s
   AND attempts = %(attempt)s
   AND state = 'running'
   AND locked_by = %(worker_id)s
   AND lease_expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
RETURNING id, state, finished_at;
