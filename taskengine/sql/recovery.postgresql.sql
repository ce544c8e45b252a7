-- Recovery: the one and only path by which a running job whose lease expired goes back
-- to the queue (or to failed). Compare-and-set on state = 'running' AND an expired
-- lease, so a job that finished between the read and the write is never touched.


-- name: recover_expired_leases
-- Index: taskengine_job_lease_idx (lease_expires_at) WHERE state = 'running'.
WITH expired AS (
    SELECT job.id, job.locked_by
      FROM taskengine_job AS job
     WHERE job.state = 'running'
       AND job.lease_expires_at < now()
     ORDER BY job.lease_expires_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
),
recovered AS (
    UPDATE taskengine_job AS job
       SET state = CASE WHEN job.attempts >= job.max_attempts OR job.on_lease_expired = 'fail'
                        THEN 'failed' ELSE 'queued' END,
           finished_at = CASE WHEN job.attempts >= job.max_attempts OR job.on_lease_expired = 'fail'
                              THEN now() END,
           run_after = CASE WHEN job.attempts >= job.max_attempts OR job.on_lease_expired = 'fail'
                            THEN job.run_after ELSE now() END,
           locked_by = NULL,
           lease_expires_at = NULL
      FROM expired
     WHERE job.id = expired.id
       AND job.state = 'running'
       AND job.lease_expires_at < now()
 RETURNING job.id, job.attempts, job.state, job.queue, job.task_path, expired.locked_by
),
attempt_logged AS (
    UPDATE task_execution_logs AS log
       SET finished_at = now(),
           outcome = 'lost',
           error_class = 'taskengine.LeaseExpired',
           error_message = 'lease expired: worker ' || recovered.locked_by || ' stopped heartbeating'
      FROM recovered
     WHERE log.job_id = recovered.id
       AND log.attempt = recovered.attempts
       AND log.finished_at IS NULL
)
SELECT id, attempts, state, queue, task_path, locked_by FROM recovered;
