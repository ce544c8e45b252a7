-- Read-only queries behind the database gauges of taskengine.collectors (SQLite). The
-- same bounded shapes as metrics.postgresql.sql; the database clock is
-- julianday('now') (UTC, like Django's storage format). '%%' is a literal '%'.


-- name: metrics_queued_queues
-- Loose index scan over the distinct queues with queued jobs (one MIN() probe each).
-- Index: taskengine_job_claim_idx (queue, priority DESC, run_after, id) WHERE queued.
WITH RECURSIVE queues(queue) AS (
    SELECT MIN(job.queue) FROM taskengine_job AS job WHERE job.state = 'queued'
    UNION ALL
    SELECT (SELECT MIN(job.queue) FROM taskengine_job AS job
             WHERE job.state = 'queued' AND job.queue > queues.queue)
      FROM queues
     WHERE queues.queue IS NOT NULL
)
SELECT queue FROM queues WHERE queue IS NOT NULL LIMIT %(max_queues)s;


-- name: metrics_queue_stats
-- One queue's capped depth and the run_after of its oldest queued job (skip over the
-- distinct priorities, first run_after of each). Age 0 when nothing is due yet.
-- Index: taskengine_job_claim_idx (queue, priority DESC, run_after, id) WHERE queued.
WITH RECURSIVE priorities(priority) AS (
    SELECT MAX(job.priority) FROM taskengine_job AS job
     WHERE job.state = 'queued' AND job.queue = %(queue)s
    UNION ALL
    SELECT (SELECT MAX(job.priority) FROM taskengine_job AS job
             WHERE job.state = 'queued' AND job.queue = %(queue)s
               AND job.priority < priorities.priority)
      FROM priorities
     WHERE priorities.priority IS NOT NULL
)
SELECT (SELECT count(*)
          FROM (SELECT 1 FROM taskengine_job AS job
                 WHERE job.state = 'queued' AND job.queue = %(queue)s
                 LIMIT %(cap)s)) AS depth,
       (SELECT (julianday('now') - julianday(MIN(head.run_after))) * 86400.0
          FROM (SELECT (SELECT job.run_after FROM taskengine_job AS job
                         WHERE job.state = 'queued' AND job.queue = %(queue)s
                           AND job.priority = priorities.priority
                         ORDER BY job.run_after
                         LIMIT 1) AS run_after
                  FROM priorities
                 WHERE priorities.priority IS NOT NULL) AS head) AS oldest_age_seconds;


-- name: metrics_running_stats
-- Running jobs per queue (count, expired leases, oldest attempt age), capped, expired
-- leases first. Index: taskengine_job_worker_idx (partial: the running rows only).
SELECT running.queue,
       count(*) AS running,
       SUM(CASE WHEN running.lease_expires_at < strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now') THEN 1 ELSE 0 END)
           AS expired_leases,
       COALESCE((julianday('now') - julianday(MIN(running.last_attempted_at))) * 86400.0, 0) AS oldest_seconds
  FROM (SELECT job.queue, job.lease_expires_at, job.last_attempted_at
          FROM taskengine_job AS job
         WHERE job.state = 'running'
         ORDER BY job.lease_expires_at
         LIMIT %(cap)s) AS running
 GROUP BY running.queue
 ORDER BY running.queue
 LIMIT %(max_queues)s;


-- name: metrics_leaders
-- One row per election name. Index: taskengine_leader primary key.
SELECT leader.name, leader.term,
       (leader.expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')) AS present
  FROM taskengine_leader AS leader
 ORDER BY leader.name
 LIMIT 20;


-- name: metrics_workers_alive
-- Index: taskengine_worker_alive_idx (state, last_heartbeat_at).
SELECT count(*)
  FROM taskengine_worker AS worker
 WHERE worker.state IN ('running', 'draining')
   AND worker.last_heartbeat_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now',
                                           '-' || %(dead_after)s || ' seconds');


-- name: metrics_queues_paused
-- The paused queues (a handful of rows at most). Index: taskengine_queue primary key.
SELECT queue.name
  FROM taskengine_queue AS queue
 WHERE queue.paused
 ORDER BY queue.name
 LIMIT %(max_queues)s;
