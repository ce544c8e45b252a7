-- Recovery for SQLite; see recovery.postgresql.sql. Runs inside one IMMEDIATE
-- transaction with its attempt-log update.


-- name: recover_expired_leases
UPDATE taskengine_job
   SET state = CASE WHEN attempts >= max_attempts OR on_lease_expired = 'fail'
                    THEN 'failed' ELSE 'queued' END,
       finished_at = CASE WHEN attempts >= max_attempts OR on_lease_expired = 'fail'
                          THEN strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now') END,
       run_after = CASE WHEN attempts >= max_attempts OR on_lease_expired = 'fail'
                        THEN run_after ELSE strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now') END,
       locked_by = NULL,
       lease_expires_at = NULL
 WHERE id IN (
        SELECT id FROM taskengine_job
         WHERE state = 'running'
           AND lease_expires_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
         ORDER BY lease_expires_at
         LIMIT %(limit)s
       )
   AND state = 'running'
   AND lease_expires_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
RETURNING id, attempts, state, queue, task_path, NULL;


-- name: log_lost_attempt
UPDATE task_execution_logs
   SET finished_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'),
       outcome = 'lost',
       error_class = 'taskengine.LeaseExpired',
       error_message = 'lease expired: worker ' || worker_id || ' stopped heartbeating'
 WHERE job_id = %(id)s AND attempt = %(attempt)s AND finished_at IS NULL;
