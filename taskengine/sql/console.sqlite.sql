-- Read-only queries of the operator console (SQLite). Nothing here writes. SQLite
-- answers DISTINCT on an indexed leading column by stepping through the index.


-- name: console_distinct_queues
-- Index: taskengine_job_queue_state_idx (queue, state).
SELECT DISTINCT job.queue FROM taskengine_job AS job ORDER BY job.queue LIMIT %(limit)s;


-- name: console_distinct_tasks
-- Index: taskengine_job_task_idx (task_path, id DESC).
SELECT DISTINCT job.task_path FROM taskengine_job AS job ORDER BY job.task_path LIMIT %(limit)s;


-- name: console_distinct_tenants
-- Index: taskengine_job_tenant_idx (tenant, id DESC).
SELECT DISTINCT job.tenant FROM taskengine_job AS job
 WHERE job.tenant IS NOT NULL ORDER BY job.tenant LIMIT %(limit)s;


-- name: console_now
-- The database clock (UTC, microseconds), as the engine's own SQL writes it.
SELECT STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now');
