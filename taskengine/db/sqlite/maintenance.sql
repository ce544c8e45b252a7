-- Leader-only maintenance writes for SQLite; see maintenance.postgresql.sql. Each
-- statement carries the leader's lease in an EXISTS; SQLite's single write lock keeps
-- the check and the write together.


-- name: mark_dead_workers
-- Index: taskengine_worker_alive_idx (state, last_heartbeat_at).
UPDATE taskengine_worker
   SET state = 'dead'
 WHERE state IN ('running', 'draining')
   AND last_heartbeat_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %(dead_after)s || ' seconds')
   AND EXISTS (SELECT 1 FROM taskengine_leader
                WHERE name = %(election)s AND holder = %(holder)s AND term = %(term)s
                  AND expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'))
RETURNING worker_id, host, pid, last_heartbeat_at;


-- name: prune_workers
-- Index: taskengine_worker_alive_idx; taskengine_job_worker_idx.
DELETE FROM taskengine_worker
 WHERE state IN ('stopped', 'dead')
   AND last_heartbeat_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %(prune_after)s || ' seconds')
   AND NOT EXISTS (SELECT 1 FROM taskengine_job AS job
                    WHERE job.state = 'running' AND job.locked_by = taskengine_worker.worker_id)
   AND EXISTS (SELECT 1 FROM taskengine_leader
                WHERE name = %(election)s AND holder = %(holder)s AND term = %(term)s
                  AND expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'))
RETURNING worker_id;


-- name: enqueue_schedule_slot
-- Index: taskengine_job_schedule_slot_uniq (schedule_id, slot).
INSERT INTO taskengine_job (
    task_path, backend, queue, priority, args, kwargs, state, run_after, enqueued_at,
    attempts, max_attempts, timeout_seconds, retry_backoff_seconds, on_lease_expired,
    unique_key, tenant, acting_user_id, schedule_id, slot
)
SELECT %(task_path)s, %(backend)s, %(queue)s, %(priority)s, %(args)s, %(kwargs)s,
       'queued', %(slot)s, strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'),
       0, %(max_attempts)s, %(timeout_seconds)s, %(retry_backoff_seconds)s, %(on_lease_expired)s,
       NULL, %(tenant)s, NULL, %(schedule_id)s, %(slot)s
 WHERE EXISTS (SELECT 1 FROM taskengine_leader
                WHERE name = %(election)s AND holder = %(holder)s AND term = %(term)s
                  AND expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'))
ON CONFLICT (schedule_id, slot) WHERE schedule_id IS NOT NULL DO NOTHING
RETURNING id;


-- name: record_missed_slot
-- Never a slot whose job exists (see the PostgreSQL file).
-- Index: taskengine_missed_slot_uniq (schedule_id, slot); taskengine_job_schedule_slot_uniq.
INSERT INTO taskengine_missed_slot (schedule_id, slot, reason, recorded_at)
SELECT %(schedule_id)s, %(slot)s, %(reason)s, strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
 WHERE EXISTS (SELECT 1 FROM taskengine_leader
                WHERE name = %(election)s AND holder = %(holder)s AND term = %(term)s
                  AND expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'))
   AND NOT EXISTS (SELECT 1 FROM taskengine_job AS job
                    WHERE job.schedule_id = %(schedule_id)s AND job.slot = %(slot)s)
ON CONFLICT (schedule_id, slot) WHERE schedule_id IS NOT NULL DO NOTHING
RETURNING id;


-- name: advance_schedule
-- Index: primary key.
UPDATE taskengine_schedule
   SET last_slot_at = %(slot)s
 WHERE id = %(schedule_id)s
   AND (last_slot_at IS NULL OR last_slot_at < %(slot)s)
   AND EXISTS (SELECT 1 FROM taskengine_leader
                WHERE name = %(election)s AND holder = %(holder)s AND term = %(term)s
                  AND expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'))
RETURNING id;


-- name: select_retention_batch
-- One batch of terminal jobs of one state finished before the cutoff and not before
-- %(after)s (where the pass's previous batch stopped), oldest first, with their
-- finished_at (the next batch's %(after)s).
-- Index: taskengine_job_finished_idx (finished_at).
SELECT id, finished_at
  FROM taskengine_job
 WHERE state = %(state)s
   AND finished_at >= %(after)s
   AND finished_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %(age_seconds)s || ' seconds')
 ORDER BY finished_at
 LIMIT %(batch_size)s;


-- name: delete_retention_attempts
-- The attempt rows of the batch select_retention_batch read, in the same transaction
-- (SQLite's one writer: nothing changes the batch in between).
-- Index: task_execution_logs_job_attempt_uniq (job_id, attempt).
DELETE FROM task_execution_logs
 WHERE job_id IN (SELECT value FROM json_each(%(ids)s));


-- name: delete_retention_jobs
-- The batch's jobs, the state checked again. Index: primary key.
DELETE FROM taskengine_job
 WHERE id IN (SELECT value FROM json_each(%(ids)s))
   AND state = %(state)s;
