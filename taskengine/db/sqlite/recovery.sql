-- Recovery for SQLite; see recovery.postgresql.sql. The three statements run inside one
-- IMMEDIATE transaction (the single write lock), so the fence, the read and the
-- compare-and-set writes cannot interleave with any other writer.


-- name: select_recoverable
-- Index: taskengine_job_worker_idx (the running rows); taskengine_worker_alive_idx.
SELECT id, locked_by, attempts,
       lease_expires_at >= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now') AS worker_dead
  FROM taskengine_job
 WHERE state = 'running'
   AND (lease_expires_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
        OR locked_by IN (SELECT worker_id FROM taskengine_worker
                          WHERE state IN ('dead', 'stopped')
                             OR (state IN ('running', 'draining')
                                 AND last_heartbeat_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now',
                                                                  '-' || %(dead_after)s || ' seconds'))))
   AND (%(job_ids)s IS NULL OR id IN (SELECT value FROM json_each(%(job_ids)s)))
   AND (%(term)s IS NULL
        OR EXISTS (SELECT 1 FROM taskengine_leader
                    WHERE name = %(election)s AND holder = %(holder)s AND term = %(term)s
                      AND expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')))
 ORDER BY lease_expires_at
 LIMIT %(limit)s;


-- name: recover_job
-- Compare-and-set on the attempt select_recoverable read, re-checking (as the Postgres
-- statement does under its row lock) that the lease is still expired or its holder
-- still dead: the write stands on its own, whatever ran since the read.
-- Index: primary key; the workers' primary key.
UPDATE taskengine_job
   SET state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                        WHEN attempts >= max_attempts OR on_lease_expired = 'fail'
                    THEN 'failed' ELSE 'queued' END,
       finished_at = CASE WHEN cancel_requested_at IS NOT NULL
                                OR attempts >= max_attempts OR on_lease_expired = 'fail'
                          THEN strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now') END,
       run_after = CASE WHEN cancel_requested_at IS NOT NULL
                              OR attempts >= max_attempts OR on_lease_expired = 'fail'
                        THEN run_after ELSE strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now') END,
       locked_by = NULL,
       lease_expires_at = NULL
 WHERE id = %(id)s
   AND state = 'running'
   AND locked_by = %(locked_by)s
   AND attempts = %(attempts)s
   AND (lease_expires_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
        OR EXISTS (SELECT 1 FROM taskengine_worker AS worker
                    WHERE worker.worker_id = taskengine_job.locked_by
                      AND (worker.state IN ('dead', 'stopped')
                           OR (worker.state IN ('running', 'draining')
                               AND worker.last_heartbeat_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now',
                                                                       '-' || %(dead_after)s || ' seconds')))))
RETURNING id, attempts, state, queue, task_path;


-- name: log_lost_attempt
-- Index: task_execution_logs_job_attempt_uniq.
UPDATE task_execution_logs
   SET finished_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'),
       outcome = 'lost',
       error_class = %(error_class)s,
       error_message = %(error_message)s
 WHERE job_id = %(id)s AND attempt = %(attempt)s AND finished_at IS NULL;
