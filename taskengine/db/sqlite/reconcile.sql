-- reconcile: the report's reads and the fixes' compare-and-set writes (SQLite; the same
-- queries as reconcile.postgresql.sql, with the clock as strftime(..., 'now') in UTC).
-- Reads select candidates in id order with count(*) OVER () (the full count before
-- LIMIT), so one query gives a finding's count and its sample, and the same query
-- pages through candidates (id > %(after_id)s) when --apply works in batches.
-- Every write re-checks, in its WHERE, the condition that made the row a finding, so
-- two reconciles at once (or reconcile racing the recovery sweep) fix each row once.
-- %(tenants)s is NULL (every tenant) or a JSON array; jobs with no tenant match NULL only.
-- A worker is dead when its row says dead/stopped or its heartbeat is older than
-- %(dead_after)s seconds, on the database clock.


-- name: reconcile_expired_leases
-- Running jobs whose lease has expired (the recovery sweep has not got to them).
-- Index: taskengine_job_worker_idx (partial: the running rows only).
SELECT job.id, job.attempts, job.locked_by, job.tenant, count(*) OVER () AS total
  FROM taskengine_job AS job
 WHERE job.state = 'running'
   AND job.lease_expires_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
   AND job.id > %(after_id)s
   AND (%(tenants)s IS NULL OR job.tenant IN (SELECT value FROM json_each(%(tenants)s)))
 ORDER BY job.id
 LIMIT %(limit)s;


-- name: reconcile_dead_worker_jobs
-- Running jobs with a live lease whose worker is known dead (disjoint from
-- reconcile_expired_leases). A worker with no row at all is not "known dead": its
-- jobs are left to their lease.
-- Index: taskengine_job_worker_idx (locked_by) WHERE state = 'running'; worker pkey.
SELECT job.id, job.attempts, job.locked_by, job.tenant, count(*) OVER () AS total
  FROM taskengine_job AS job
 WHERE job.state = 'running'
   AND job.lease_expires_at >= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
   AND EXISTS (SELECT 1 FROM taskengine_worker AS worker
                WHERE worker.worker_id = job.locked_by
                  AND (worker.state IN ('dead', 'stopped')
                       OR worker.last_heartbeat_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %(dead_after)s || ' seconds')))
   AND job.id > %(after_id)s
   AND (%(tenants)s IS NULL OR job.tenant IN (SELECT value FROM json_each(%(tenants)s)))
 ORDER BY job.id
 LIMIT %(limit)s;


-- name: reconcile_blocked_unique_keys
-- Live jobs holding a unique key that cannot make progress: running with an expired
-- lease or a dead worker, or queued more than %(stale_after)s seconds past run_after.
-- While such a job lives, enqueue() with its key returns it instead of new work.
-- Index: taskengine_job_unique_live_key (unique_key) WHERE state IN live states.
SELECT job.id, job.attempts, job.locked_by, job.tenant, count(*) OVER () AS total,
       job.unique_key, job.state
  FROM taskengine_job AS job
 WHERE job.unique_key IS NOT NULL
   AND job.state IN ('queued', 'running')
   AND ((job.state = 'running'
         AND (job.lease_expires_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
              OR EXISTS (SELECT 1 FROM taskengine_worker AS worker
                          WHERE worker.worker_id = job.locked_by
                            AND (worker.state IN ('dead', 'stopped')
                                 OR worker.last_heartbeat_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %(dead_after)s || ' seconds')))))
        OR (job.state = 'queued' AND job.run_after < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %(stale_after)s || ' seconds')))
   AND job.id > %(after_id)s
   AND (%(tenants)s IS NULL OR job.tenant IN (SELECT value FROM json_each(%(tenants)s)))
 ORDER BY job.id
 LIMIT %(limit)s;


-- name: reconcile_stale_queued
-- Queued jobs more than %(stale_after)s seconds past their run_after.
-- Index: taskengine_job_claim_idx (partial: scans the queued rows only).
SELECT job.id, job.attempts, job.locked_by, job.tenant, count(*) OVER () AS total, job.queue
  FROM taskengine_job AS job
 WHERE job.state = 'queued'
   AND job.run_after < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %(stale_after)s || ' seconds')
   AND job.id > %(after_id)s
   AND (%(tenants)s IS NULL OR job.tenant IN (SELECT value FROM json_each(%(tenants)s)))
 ORDER BY job.id
 LIMIT %(limit)s;


-- name: reconcile_stale_queued_by_queue
-- Index: taskengine_job_claim_idx (queue leading; partial on queued).
SELECT job.queue, count(*)
  FROM taskengine_job AS job
 WHERE job.state = 'queued'
   AND job.run_after < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %(stale_after)s || ' seconds')
   AND (%(tenants)s IS NULL OR job.tenant IN (SELECT value FROM json_each(%(tenants)s)))
 GROUP BY job.queue
 ORDER BY job.queue;


-- name: reconcile_cancel_queued_job
-- An extra job in an already-taken schedule slot, cancelled before it runs.
-- Index: primary key.
UPDATE taskengine_job AS job
   SET state = 'cancelled',
       finished_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
 WHERE job.id = %(id)s
   AND job.state = 'queued'
RETURNING id, state, queue, tenant;


-- name: reconcile_schedules
-- Index: none (the schedule table is small).
SELECT schedule.id, schedule.name, schedule.cron, schedule.interval_seconds, schedule.timezone,
       schedule.last_slot_at, schedule.created_at, schedule.tenant
  FROM taskengine_schedule AS schedule
 WHERE schedule.enabled
   AND (%(tenants)s IS NULL OR schedule.tenant IN (SELECT value FROM json_each(%(tenants)s)))
 ORDER BY schedule.id;


-- name: reconcile_schedule_points
-- Every recorded slot of one schedule in the look-back window: its jobs (any state)
-- and the slots the scheduler recorded as missed.
-- Index: taskengine_job_schedule_slot_uniq (schedule_id, slot);
--        taskengine_missed_slot_uniq (schedule_id, slot).
SELECT point.slot, point.kind, point.id, point.state
  FROM (SELECT job.slot, 'job' AS kind, job.id, job.state
          FROM taskengine_job AS job
         WHERE job.schedule_id = %(schedule_id)s
           AND job.slot >= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %(lookback)s || ' seconds')
        UNION ALL
        SELECT missed.slot, 'missed' AS kind, missed.id, NULL AS state
          FROM taskengine_missed_slot AS missed
         WHERE missed.schedule_id = %(schedule_id)s
           AND missed.slot >= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %(lookback)s || ' seconds')) AS point
 ORDER BY point.slot, point.kind, point.id
 LIMIT %(limit)s;


-- name: reconcile_record_missed_slot
-- Create-if-absent through the unique constraint, never check-then-insert: of two
-- reconciles recording the same slot, one inserts and the other gets no row back.
-- Index: taskengine_missed_slot_uniq (schedule_id, slot).
INSERT INTO taskengine_missed_slot (schedule_id, slot, reason, recorded_at)
VALUES (%(schedule_id)s, %(slot)s, %(reason)s, strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'))
ON CONFLICT (schedule_id, slot) WHERE schedule_id IS NOT NULL DO NOTHING
RETURNING id;


-- name: reconcile_user_id_mismatch
-- Execution logs whose user_id_str disagrees with user_id.
-- Index: task_execution_logs_pkey (id order); the filter reads every row.
SELECT log.id, log.user_id, log.user_id_str, count(*) OVER () AS total
  FROM task_execution_logs AS log
 WHERE log.user_id IS NOT NULL
   AND log.user_id_str IS NOT NULL
   AND log.user_id_str <> CAST(log.user_id AS TEXT)
   AND log.id > %(after_id)s
   AND (%(tenants)s IS NULL
        OR log.job_id IN (SELECT job.id FROM taskengine_job AS job WHERE job.tenant IN (SELECT value FROM json_each(%(tenants)s))))
 ORDER BY log.id
 LIMIT %(limit)s;


-- name: reconcile_fix_user_id_mismatch
-- Compare-and-set on the exact wrong value that was read; returns the job's tenant for
-- the audit row (RETURNING sees the updated table by its name, not by the alias).
-- Index: task_execution_logs_pkey; the job's rowid for the tenant.
UPDATE task_execution_logs AS log
   SET user_id_str = CAST(log.user_id AS TEXT)
 WHERE log.id = %(id)s
   AND log.user_id IS NOT NULL
   AND log.user_id_str = %(old)s
RETURNING id, user_id_str, (SELECT job.tenant FROM taskengine_job AS job WHERE job.id = task_execution_logs.job_id) AS tenant;


-- name: reconcile_leaders
-- Index: taskengine_leader_pkey (one row per election name).
SELECT leader.name, leader.holder, leader.term, leader.expires_at, leader.expires_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now') AS expired
  FROM taskengine_leader AS leader
 ORDER BY leader.expires_at DESC;


-- name: reconcile_workers
-- Workers not cleanly stopped, newest heartbeat first (bounded).
-- Index: taskengine_worker_alive_idx (state, last_heartbeat_at).
SELECT worker.worker_id, worker.host, worker.pid, worker.state, worker.last_heartbeat_at,
       (julianday('now') - julianday(worker.last_heartbeat_at)) * 86400.0 AS heartbeat_age,
       (worker.state IN ('running', 'draining')
        AND worker.last_heartbeat_at >= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %(dead_after)s || ' seconds')) AS alive,
       (SELECT count(*) FROM taskengine_job AS job
         WHERE job.state = 'running' AND job.locked_by = worker.worker_id) AS running_jobs
  FROM taskengine_worker AS worker
 WHERE worker.state <> 'stopped'
 ORDER BY worker.last_heartbeat_at DESC
 LIMIT %(limit)s;


-- name: reconcile_live_worker_queues
-- The queues live workers serve (to say which stale queues nobody serves).
-- Index: taskengine_worker_alive_idx (state, last_heartbeat_at).
SELECT worker.queues
  FROM taskengine_worker AS worker
 WHERE worker.state IN ('running', 'draining')
   AND worker.last_heartbeat_at >= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %(dead_after)s || ' seconds');
