-- Execution-log user ids: fill the canonical user_id_str from the legacy integer
-- user_id, and report how far that has got. One named block per query (queries.py).
-- Every write is compare-and-set on user_id_str IS NULL, so a row is written at most
-- once however many backfills run, and an interrupted run loses nothing.
-- Tenant scoping: %(tenants)s is NULL (every tenant) or a text[] of tenant names,
-- matched through the attempt's job.


-- name: backfill_count_pending
-- Rows a backfill would still write. Full scan of task_execution_logs (no index on
-- user_id_str: it is read in bulk, never looked up by value).
SELECT count(*)
  FROM task_execution_logs AS log
 WHERE log.user_id IS NOT NULL
   AND log.user_id_str IS NULL
   AND (%(tenants)s::text[] IS NULL
        OR log.job_id IN (SELECT job.id FROM taskengine_job AS job WHERE job.tenant = ANY(%(tenants)s::text[])));


-- name: backfill_next_batch
-- The next bounded batch of rows still missing user_id_str, in primary-key order.
-- Index: task_execution_logs_pkey (walks id > %(after_id)s, stops after the limit).
SELECT log.id
  FROM task_execution_logs AS log
 WHERE log.id > %(after_id)s
   AND log.user_id IS NOT NULL
   AND log.user_id_str IS NULL
   AND (%(tenants)s::text[] IS NULL
        OR log.job_id IN (SELECT job.id FROM taskengine_job AS job WHERE job.tenant = ANY(%(tenants)s::text[])))
 ORDER BY log.id
 LIMIT %(limit)s;


-- name: backfill_fill_batch
-- Compare-and-set: only rows still missing the value are written; the rows returned
-- are exactly the rows this statement wrote, each with its job's tenant (the audit
-- row of the batch is written per tenant).
-- Index: task_execution_logs_pkey; taskengine_job_pkey for the tenant.
UPDATE task_execution_logs AS log
   SET user_id_str = log.user_id::text
 WHERE log.id = ANY(%(ids)s::bigint[])
   AND log.user_id IS NOT NULL
   AND log.user_id_str IS NULL
RETURNING log.id, (SELECT job.tenant FROM taskengine_job AS job WHERE job.id = log.job_id) AS tenant;


-- name: backfill_report_counts
-- One pass over the table for the backfill report.
SELECT count(*) AS total,
       count(*) FILTER (WHERE log.user_id_str IS NOT NULL) AS filled,
       count(*) FILTER (WHERE log.user_id IS NOT NULL AND log.user_id_str IS NULL) AS missing,
       count(*) FILTER (WHERE log.user_id IS NOT NULL AND log.user_id_str IS NOT NULL
                          AND log.user_id_str <> log.user_id::text) AS mismatched,
       count(*) FILTER (WHERE log.user_id IS NULL AND log.user_id_str IS NULL) AS without_user
  FROM task_execution_logs AS log
 WHERE (%(tenants)s::text[] IS NULL
        OR log.job_id IN (SELECT job.id FROM taskengine_job AS job WHERE job.tenant = ANY(%(tenants)s::text[])));


-- name: backfill_sample_missing
-- Index: task_execution_logs_pkey (first offenders by id).
SELECT log.id
  FROM task_execution_logs AS log
 WHERE log.user_id IS NOT NULL
   AND log.user_id_str IS NULL
   AND (%(tenants)s::text[] IS NULL
        OR log.job_id IN (SELECT job.id FROM taskengine_job AS job WHERE job.tenant = ANY(%(tenants)s::text[])))
 ORDER BY log.id
 LIMIT %(limit)s;


-- name: backfill_sample_mismatched
-- Index: task_execution_logs_pkey (first offenders by id).
SELECT log.id
  FROM task_execution_logs AS log
 WHERE log.user_id IS NOT NULL
   AND log.user_id_str IS NOT NULL
   AND log.user_id_str <> log.user_id::text
   AND (%(tenants)s::text[] IS NULL
        OR log.job_id IN (SELECT job.id FROM taskengine_job AS job WHERE job.tenant = ANY(%(tenants)s::text[])))
 ORDER BY log.id
 LIMIT %(limit)s;
