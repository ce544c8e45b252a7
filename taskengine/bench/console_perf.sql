-- The data behind manage.py console_perf (PostgreSQL only), run in the scratch database
-- the command creates and drops, never in the configured one: --rows jobs (a million by
-- default) and their attempt and audit rows, in two statements. The command reads this
-- file with taskengine.queries.package_statements (the format of taskengine/db/<vendor>/*.sql).


-- name: console_perf_fill_jobs
-- %(rows)s jobs in one statement.
-- Shape: 93%% succeeded, 3%% failed, 2%% cancelled, 1.5%% queued, 0.5%% running; 50
-- tenants, 4 queues, 10 task paths; enqueued over the last 30 days, so the last hour
-- holds ~0.14%% of the rows (the chart's window). Satisfies every CHECK constraint.
INSERT INTO taskengine_job (
    task_path, backend, queue, priority, args, kwargs, state, run_after, enqueued_at,
    started_at, last_attempted_at, finished_at, attempts, max_attempts, on_lease_expired,
    locked_by, lease_expires_at, tenant, return_value
)
SELECT 'project.tasks.task_' || (i %% 10), 'default',
       (ARRAY['default', 'demo', 'emails', 'reports'])[1 + i %% 4], 0,
       jsonb_build_array(i, 'payload'), '{}'::jsonb, s.state,
       t.enqueued, t.enqueued,
       CASE WHEN s.state IN ('succeeded', 'failed', 'running') THEN t.enqueued END,
       CASE WHEN s.state IN ('succeeded', 'failed', 'running') THEN t.enqueued END,
       CASE WHEN s.state IN ('succeeded', 'failed', 'cancelled') THEN t.enqueued + interval '1 second' END,
       CASE s.state WHEN 'failed' THEN 3 WHEN 'succeeded' THEN 1 WHEN 'running' THEN 1 ELSE 0 END,
       3, 'retry',
       CASE WHEN s.state = 'running' THEN 'perf-worker-' || (i %% 8) END,
       CASE WHEN s.state = 'running' THEN now() + interval '30 seconds' END,
       'tenant-' || (i %% 50),
       CASE WHEN s.state = 'succeeded' THEN to_jsonb(i) END
  FROM generate_series(1, %(rows)s) AS i
 CROSS JOIN LATERAL (
        SELECT CASE WHEN i %% 1000 < 930 THEN 'succeeded'
                    WHEN i %% 1000 < 960 THEN 'failed'
                    WHEN i %% 1000 < 980 THEN 'cancelled'
                    WHEN i %% 1000 < 995 THEN 'queued'
                    ELSE 'running' END AS state
       ) AS s
 CROSS JOIN LATERAL (
        SELECT now() - (%(rows)s - i) * (interval '30 days' / %(rows)s) AS enqueued
       ) AS t;


-- name: console_perf_fill_attempts
-- One attempt row per failed job (with a traceback), and one audit row per 100 jobs.
WITH failed_logs AS (
    INSERT INTO task_execution_logs (job_id, attempt, worker_id, started_at, finished_at, outcome,
                                     error_class, error_message, traceback)
    SELECT job.id, job.attempts, 'perf-worker-1', job.started_at, job.finished_at, 'failed',
           'RuntimeError', 'simulated failure',
           'Traceback (most recent call last):' || repeat(E'\n  File "x.py", line 1, in f', 40)
           || E'\nRuntimeError: simulated failure'
      FROM taskengine_job AS job
     WHERE job.state = 'failed'
)
INSERT INTO taskengine_operator_action (actor_repr, action, target_type, target_id, tenant,
                                        state_before, state_after, reason, created_at)
SELECT 'perf', 'requeue', 'job', job.id::text, job.tenant, '{"state": "failed"}', '{"state": "queued"}',
       '', job.enqueued_at
  FROM taskengine_job AS job
 WHERE job.id %% 100 = 0;
