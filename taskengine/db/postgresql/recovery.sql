-- Recovery: the one and only path by which a running job goes back to the queue (or to
-- failed) without its worker finishing it: its lease expired, or its worker is known
-- dead (state dead/stopped, or no heartbeat for %(dead_after)s seconds) — the latter
-- without waiting for the full lease. Compare-and-set on state = 'running' and the
-- lease holder (locked_by, attempts), so a job that finished between the read and the
-- write is never touched.
--
-- Re-checked under the row lock: the candidates are read in the statement's snapshot,
-- and a commit can land before their rows are locked (a heartbeat that renewed the
-- lease, another recovery and a new claim, the worker's own heartbeat). FOR UPDATE
-- re-evaluates the WHERE of "expired" on the newest row version (READ COMMITTED), but
-- not the CTEs that picked the ids, so everything the decision rests on is in that
-- WHERE: the attempt that was picked (locked_by, attempts), and the lease still expired
-- or the lease holder still dead — its worker row locked FOR SHARE, so a heartbeat
-- committed meanwhile is seen and one in flight waits until this statement commits.
--
-- Fencing: with a leader lease (%(term)s not NULL) the candidates are read only while
-- that lease is the live leader's; FOR SHARE on the leader row holds off a takeover
-- until this statement commits, so a deposed leader's sweep changes nothing. With
-- %(term)s NULL (an operator's explicit run) there is no fence.


-- name: recover_expired_leases
-- %(job_ids)s: NULL for the sweep, or the ids reconcile --apply found (same transition).
-- Index: taskengine_job_worker_idx (locked_by) WHERE state = 'running' — the running rows
-- only, few by construction — for expired leases and for the jobs of dead workers;
-- taskengine_worker_alive_idx (state, last_heartbeat_at) for the workers; the workers'
-- primary key for the re-check.
WITH dead_worker AS (
    SELECT worker.worker_id
      FROM taskengine_worker AS worker
     WHERE worker.state IN ('dead', 'stopped')
        OR (worker.state IN ('running', 'draining')
            AND worker.last_heartbeat_at < now() - make_interval(secs => %(dead_after)s))
),
candidate AS (
    (SELECT job.id, job.locked_by, job.attempts
       FROM taskengine_job AS job
      WHERE job.state = 'running'
        AND job.lease_expires_at < now()
        AND (%(job_ids)s::bigint[] IS NULL OR job.id = ANY(%(job_ids)s::bigint[]))
      ORDER BY job.lease_expires_at
      LIMIT %(limit)s)
    UNION
    (SELECT job.id, job.locked_by, job.attempts
       FROM taskengine_job AS job
       JOIN dead_worker ON dead_worker.worker_id = job.locked_by
      WHERE job.state = 'running'
        AND (%(job_ids)s::bigint[] IS NULL OR job.id = ANY(%(job_ids)s::bigint[]))
      LIMIT %(limit)s)
),
expired AS (
    SELECT job.id, job.locked_by, job.attempts,
           job.lease_expires_at >= now() AS worker_dead
      FROM taskengine_job AS job
      JOIN candidate ON candidate.id = job.id
     WHERE job.state = 'running'
       AND job.locked_by = candidate.locked_by
       AND job.attempts = candidate.attempts
       AND (job.lease_expires_at < now()
            OR EXISTS (SELECT 1
                         FROM taskengine_worker AS worker
                        WHERE worker.worker_id = job.locked_by
                          AND (worker.state IN ('dead', 'stopped')
                               OR (worker.state IN ('running', 'draining')
                                   AND worker.last_heartbeat_at < now() - make_interval(secs => %(dead_after)s)))
                          FOR SHARE))
       AND (%(term)s::bigint IS NULL
            OR EXISTS (SELECT 1
                         FROM taskengine_leader AS leader
                        WHERE leader.name = %(election)s
                          AND leader.holder = %(holder)s
                          AND leader.term = %(term)s::bigint
                          AND leader.expires_at > now()
                          FOR SHARE))
     ORDER BY job.lease_expires_at
     LIMIT %(limit)s
       FOR UPDATE OF job SKIP LOCKED
),
recovered AS (
    UPDATE taskengine_job AS job
       SET state = CASE WHEN job.cancel_requested_at IS NOT NULL THEN 'cancelled'
                        WHEN job.attempts >= job.max_attempts OR job.on_lease_expired = 'fail'
                        THEN 'failed' ELSE 'queued' END,
           finished_at = CASE WHEN job.cancel_requested_at IS NOT NULL
                                OR job.attempts >= job.max_attempts OR job.on_lease_expired = 'fail'
                              THEN now() END,
           run_after = CASE WHEN job.cancel_requested_at IS NOT NULL
                              OR job.attempts >= job.max_attempts OR job.on_lease_expired = 'fail'
                            THEN job.run_after ELSE now() END,
           locked_by = NULL,
           lease_expires_at = NULL
      FROM expired
     WHERE job.id = expired.id
       AND job.state = 'running'
       AND job.locked_by = expired.locked_by
       AND job.attempts = expired.attempts
 RETURNING job.id, job.attempts, job.state, job.queue, job.task_path, expired.locked_by,
           expired.worker_dead
),
attempt_logged AS (
    UPDATE task_execution_logs AS log
       SET finished_at = now(),
           outcome = 'lost',
           error_class = CASE WHEN recovered.worker_dead THEN 'taskengine.WorkerDead'
                              ELSE 'taskengine.LeaseExpired' END,
           error_message = CASE WHEN recovered.worker_dead
                                THEN 'worker ' || recovered.locked_by || ' is dead'
                                ELSE 'lease expired: worker ' || recovered.locked_by
                                     || ' stopped heartbeating' END
      FROM recovered
     WHERE log.job_id = recovered.id
       AND log.attempt = recovered.attempts
       AND log.finished_at IS NULL
)
SELECT id, attempts, state, queue, task_path, locked_by, worker_dead FROM recovered;
