-- Read-only queries of the operator console (SQLite). Nothing here writes. SQLite
-- answers DISTINCT on an indexed leading column by stepping through the index.


-- name: console_queued_queues
-- Queues that have queued jobs. Index: taskengine_job_claim_idx (partial, queued).
SELECT DISTINCT job.queue FROM taskengine_job AS job
 WHERE job.state = 'queued' ORDER BY job.queue LIMIT %(limit)s;


-- name: console_distinct_tenants
-- Index: taskengine_job_tenant_idx (tenant, id DESC) WHERE tenant IS NOT NULL.
SELECT DISTINCT job.tenant FROM taskengine_job AS job
 WHERE job.tenant IS NOT NULL ORDER BY job.tenant LIMIT %(limit)s;


