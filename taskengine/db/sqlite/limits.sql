-- Queue limits and per-key concurrency on SQLite: the statements of
-- taskengine.db.limited_claim (see postgresql/limits.sql for the steps). The claim
-- runs inside one BEGIN IMMEDIATE transaction, so no other writer can start a job
-- between the counts and the lease: no row or key locks are needed.


-- name: claim_needs_limits
SELECT EXISTS (SELECT 1 FROM taskengine_queue
                WHERE name IN (SELECT value FROM json_each(%(queues)s))
                  AND NOT paused
                  AND (concurrency_limit IS NOT NULL OR rate_limit IS NOT NULL))
    OR EXISTS (SELECT 1 FROM taskengine_job
                WHERE state = 'queued'
                  AND concurrency_key IS NOT NULL
                  AND queue IN (SELECT value FROM json_each(%(queues)s))
                  AND run_after <= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
                  AND queue NOT IN (SELECT name FROM taskengine_queue WHERE paused))


-- name: limited_queues
SELECT name, paused, concurrency_limit, rate_limit,
       CASE WHEN rate_window = CAST(strftime('%%s', 'now') AS INTEGER) / COALESCE(rate_period, 1)
            THEN rate_count
            -- a window newer than this clock (see postgresql/limits.sql): no room
            WHEN rate_window > CAST(strftime('%%s', 'now') AS INTEGER) / COALESCE(rate_period, 1)
            THEN COALESCE(rate_limit, 0)
            ELSE 0 END AS rate_used,
       CAST(strftime('%%s', 'now') AS INTEGER) / COALESCE(rate_period, 1) AS window_now
  FROM taskengine_queue
 WHERE name IN (SELECT value FROM json_each(%(queues)s))
   AND (paused OR concurrency_limit IS NOT NULL OR rate_limit IS NOT NULL)
 ORDER BY name


-- name: queued_keys
-- The keys of due keyed jobs, each with its first job in claim order and its running
-- jobs. Index: taskengine_job_key_queued_idx.
SELECT head.concurrency_key AS key, head.priority, head.run_after, head.id, head.concurrency_limit,
       (SELECT count(*) FROM taskengine_job AS busy
         WHERE busy.state = 'running' AND busy.concurrency_key = head.concurrency_key) AS running
  FROM (SELECT concurrency_key, priority, run_after, id, concurrency_limit,
               row_number() OVER (PARTITION BY concurrency_key ORDER BY priority DESC, run_after, id) AS n
          FROM taskengine_job
         WHERE state = 'queued'
           AND concurrency_key IS NOT NULL
           AND queue IN (SELECT value FROM json_each(%(queues)s))
           AND run_after <= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')) AS head
 WHERE head.n = 1
 LIMIT %(max_keys)s


-- name: running_by_queue
SELECT queue, count(*) AS running
  FROM taskengine_job
 WHERE state = 'running' AND queue IN (SELECT value FROM json_each(%(queues)s))
 GROUP BY queue


-- name: running_by_key
SELECT concurrency_key AS key, count(*) AS running
  FROM taskengine_job
 WHERE state = 'running' AND concurrency_key IN (SELECT value FROM json_each(%(keys)s))
 GROUP BY concurrency_key


-- name: queue_candidates
-- Jobs without a key of one limited queue. Index: taskengine_job_claim_idx.
SELECT id, queue, concurrency_key, concurrency_limit, priority, run_after
  FROM taskengine_job
 WHERE state = 'queued'
   AND queue = %(queue)s
   AND concurrency_key IS NULL
   AND run_after <= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
 ORDER BY priority DESC, run_after, id
 LIMIT %(limit)s


-- name: key_candidates
-- Keyed jobs of one key in the given queues. Index: taskengine_job_key_queued_idx.
SELECT id, queue, concurrency_key, concurrency_limit, priority, run_after
  FROM taskengine_job
 WHERE state = 'queued'
   AND concurrency_key = %(key)s
   AND queue IN (SELECT value FROM json_each(%(queues)s))
   AND run_after <= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
 ORDER BY priority DESC, run_after, id
 LIMIT %(limit)s


-- name: claim_limited
-- Lease the picked jobs (the caller logs their attempts with log_attempts).
UPDATE taskengine_job
   SET state = 'running',
       attempts = attempts + 1,
       locked_by = %(worker_id)s,
       lease_expires_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '+' || %(lease_seconds)s || ' seconds'),
       started_at = COALESCE(started_at, strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')),
       last_attempted_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
 WHERE id IN (SELECT value FROM json_each(%(ids)s))
   AND state = 'queued'
   AND run_after <= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
RETURNING id, task_path, backend, queue, priority, args, kwargs, attempts, max_attempts,
          timeout_seconds, retry_backoff_seconds, enqueued_at, started_at,
          last_attempted_at, run_after, tenant, acting_user_id, on_lease_expired, unique_key


-- name: count_rate
UPDATE taskengine_queue
   SET rate_count = CASE WHEN rate_window = %(window)s THEN rate_count + %(started)s ELSE %(started)s END,
       rate_window = %(window)s
 WHERE name = %(name)s
   AND rate_window <= %(window)s
