-- Read-only queries behind the database gauges of taskengine.collectors (PostgreSQL).
-- Every query is bounded: it reads a handful of index entries per queue, never the whole
-- job table, so a scrape costs the same on a table of millions of rows. Nothing here
-- writes, locks rows or opens a transaction.


-- name: metrics_queued_queues
-- The distinct queues that have queued jobs, by a loose index scan: each step is one
-- index descent past the previous queue. At most %(max_queues)s steps. The ORDER BY is
-- the claim index's own order, so each step is an index-only descent of the partial
-- claim index (terminal rows are not in it).
-- Index: taskengine_job_claim_idx (queue, priority DESC, run_after, id) WHERE queued.
WITH RECURSIVE queues(queue) AS (
    SELECT (SELECT job.queue FROM taskengine_job AS job
             WHERE job.state = 'queued'
             ORDER BY job.queue, job.priority DESC
             LIMIT 1)
    UNION ALL
    SELECT (SELECT job.queue FROM taskengine_job AS job
             WHERE job.state = 'queued' AND job.queue > queues.queue
             ORDER BY job.queue, job.priority DESC
             LIMIT 1)
      FROM queues
     WHERE queues.queue IS NOT NULL
)
SELECT queue FROM queues WHERE queue IS NOT NULL LIMIT %(max_queues)s;


-- name: metrics_queue_stats
-- One queue's depth, counted exactly up to %(cap)s index entries (index-only; the ORDER BY
-- is the index's own order, so the planner walks the index and stops at the cap), and the
-- run_after of its oldest queued job: the claim index is ordered by priority first, so
-- skip over the distinct priorities (one probe each, at most 201) and take the first
-- run_after of each. The age is 0 when nothing is due yet.
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
                 ORDER BY job.priority DESC, job.run_after, job.id
                 LIMIT %(cap)s) AS capped) AS depth,
       (SELECT GREATEST(0, EXTRACT(EPOCH FROM now() - MIN(head.run_after)))::float8
          FROM priorities
         CROSS JOIN LATERAL (SELECT job.run_after FROM taskengine_job AS job
                              WHERE job.state = 'queued' AND job.queue = %(queue)s
                                AND job.priority = priorities.priority
                              ORDER BY job.run_after
                              LIMIT 1) AS head
         WHERE priorities.priority IS NOT NULL) AS oldest_age_seconds;


-- name: metrics_queue_depth_estimate
-- The planner's row estimate for a queue deeper than the exact-count cap (statistics,
-- no rows read). Index: none read; EXPLAIN only plans.
EXPLAIN (FORMAT JSON)
SELECT 1 FROM taskengine_job AS job WHERE job.state = 'queued' AND job.queue = %(queue)s;


-- name: metrics_running_stats
-- Running jobs per queue: how many, how many hold an expired lease, and the age of the
-- oldest attempt. The running set is bounded by the fleet's execution slots and capped
-- at %(cap)s rows here, expired leases first.
-- Index: taskengine_job_worker_idx (partial: the running rows only).
SELECT running.queue,
       count(*) AS running,
       count(*) FILTER (WHERE running.lease_expires_at < now()) AS expired_leases,
       COALESCE(EXTRACT(EPOCH FROM now() - MIN(running.last_attempted_at)), 0)::float8 AS oldest_seconds
  FROM (SELECT job.queue, job.lease_expires_at, job.last_attempted_at
          FROM taskengine_job AS job
         WHERE job.state = 'running'
         ORDER BY job.lease_expires_at
         LIMIT %(cap)s) AS running
 GROUP BY running.queue
 ORDER BY running.queue
 LIMIT %(max_queues)s;


-- name: metrics_leaders
-- One row per election name (a handful). Index: taskengine_leader primary key.
SELECT leader.name, leader.term, (leader.expires_at > now()) AS present
  FROM taskengine_leader AS leader
 ORDER BY leader.name
 LIMIT 20;


-- name: metrics_workers_alive
-- Workers running or draining with a fresh heartbeat.
-- Index: taskengine_worker_alive_idx (state, last_heartbeat_at).
SELECT count(*)
  FROM taskengine_worker AS worker
 WHERE worker.state IN ('running', 'draining')
   AND worker.last_heartbeat_at > now() - make_interval(secs => %(dead_after)s);


-- name: metrics_queues_paused
-- The paused queues (a handful of rows at most). Index: taskengine_queue primary key.
SELECT queue.name
  FROM taskengine_queue AS queue
 WHERE queue.paused
 ORDER BY queue.name
 LIMIT %(max_queues)s;
