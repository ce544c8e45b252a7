-- The scratch table behind raw_copy_per_s: the machine's plain COPY of the very rows
-- the bulk-enqueue phase wrote, into a table of taskengine_job's shape (columns,
-- defaults, CHECK constraints and every index, partial ones included) in the engine's
-- own database. Only the statement-level NOTIFY trigger is not copied (one NOTIFY per
-- statement). Dropped after the run.


-- name: drop_scratch
DROP TABLE IF EXISTS taskengine_bench_copy;


-- name: create_scratch
CREATE TABLE taskengine_bench_copy (LIKE taskengine_job INCLUDING ALL);


-- name: rows_out
-- The bulk phase's rows, in the columns and order the engine's copy_jobs writes.
COPY (
    SELECT id, task_path, backend, queue, priority, args, kwargs, state, run_after, enqueued_at,
           attempts, max_attempts, timeout_seconds, retry_backoff_seconds, on_lease_expired,
           unique_key, tenant, acting_user_id
      FROM taskengine_job
     WHERE queue = %(queue)s
     ORDER BY id
) TO STDOUT


-- name: rows_in
COPY taskengine_bench_copy (
    id, task_path, backend, queue, priority, args, kwargs, state, run_after, enqueued_at,
    attempts, max_attempts, timeout_seconds, retry_backoff_seconds, on_lease_expired,
    unique_key, tenant, acting_user_id
) FROM STDIN
