-- Read-only queries of the operator console (PostgreSQL). Nothing here writes (the
-- million rows manage.py console_perf times the console on are built by
-- taskengine/bench/console_perf.sql).
-- The distinct-value lists feed the filter choices of the admin and the console; a
-- plain SELECT DISTINCT would read every row of a million-row table, so they walk a
-- partial index instead ("loose index scan"): each step jumps to the next larger value.


-- name: console_queued_queues
-- Queues that have queued jobs. Index: taskengine_job_claim_idx (queue, …) WHERE
-- state = 'queued' — one index probe per value.
WITH RECURSIVE seen AS (
    (SELECT job.queue AS value FROM taskengine_job AS job
      WHERE job.state = 'queued' ORDER BY job.queue LIMIT 1)
    UNION ALL
    SELECT (SELECT job.queue FROM taskengine_job AS job
             WHERE job.state = 'queued' AND job.queue > seen.value ORDER BY job.queue LIMIT 1)
      FROM seen
     WHERE seen.value IS NOT NULL
)
SELECT value FROM seen WHERE value IS NOT NULL LIMIT %(limit)s;


-- name: console_distinct_tenants
-- Index: taskengine_job_tenant_idx (tenant, id DESC) WHERE tenant IS NOT NULL — one
-- index probe per value ("tenant > x" implies the index predicate).
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
