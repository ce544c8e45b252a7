-- Read-only queries of the operator console (PostgreSQL). Nothing here writes.
-- The distinct-value lists feed the filter choices of the admin and the console; a
-- plain SELECT DISTINCT would read every row of a million-row table, so they walk the
-- index instead ("loose index scan"): each step jumps to the next larger value.


-- name: console_distinct_queues
-- Index: taskengine_job_queue_state_idx (queue, state) — one index probe per value.
WITH RECURSIVE seen AS (
    (SELECT job.queue AS value FROM taskengine_job AS job ORDER BY job.queue LIMIT 1)
    UNION ALL
    SELECT (SELECT job.queue FROM taskengine_job AS job
             WHERE job.queue > seen.value ORDER BY job.queue LIMIT 1)
      FROM seen
     WHERE seen.value IS NOT NULL
)
SELECT value FROM seen WHERE value IS NOT NULL LIMIT %(limit)s;


-- name: console_distinct_tasks
-- Index: taskengine_job_task_idx (task_path, id DESC) — one index probe per value.
WITH RECURSIVE seen AS (
    (SELECT job.task_path AS value FROM taskengine_job AS job ORDER BY job.task_path LIMIT 1)
    UNION ALL
    SELECT (SELECT job.task_path FROM taskengine_job AS job
             WHERE job.task_path > seen.value ORDER BY job.task_path LIMIT 1)
      FROM seen
     WHERE seen.value IS NOT NULL
)
SELECT value FROM seen WHERE value IS NOT NULL LIMIT %(limit)s;


-- name: console_distinct_tenants
-- Index: taskengine_job_tenant_idx (tenant, id DESC) — one index probe per value.
WITH RECURSIVE seen AS (
    (SELECT job.tenant AS value FROM taskengine_job AS job
      WHERE job.tenant IS NOT NULL ORDER BY job.tenant LIMIT 1)
    UNION ALL
    SELECT (SELECT job.tenant FROM taskengine_job AS job
             WHERE job.tenant > seen.value ORDER BY job.tenant LIMIT 1)
      FROM seen
     WHERE seen.value IS NOT NULL
)
SELECT value FROM seen WHERE value IS NOT NULL LIMIT %(limit)s;


-- name: console_now
-- The database clock, so console ages and chart buckets never use the web server's.
-- statement_timestamp(), like Django's Now(): inside a long transaction (tests) it still
-- moves, and in autocommit it equals now().
SELECT statement_timestamp();
