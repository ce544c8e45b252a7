-- Leader-only maintenance writes: dead workers, schedules, retention. Every statement
-- carries the leader's lease (%(election)s, %(holder)s, %(term)s) and checks it with
-- FOR SHARE on the leader row, so a write under a stale term changes nothing and a
-- takeover waits until a write in flight commits (see leadership.postgresql.sql).


-- name: mark_dead_workers
-- Workers that stopped heartbeating are dead; their running jobs are then recovered by
-- recover_expired_leases without waiting for their leases.
-- Index: taskengine_worker_alive_idx (state, last_heartbeat_at).
UPDATE taskengine_worker
   SET state = 'dead'
 WHERE state IN ('running', 'draining')
   AND last_heartbeat_at < now() - make_interval(secs => %(dead_after)s)
   AND EXISTS (SELECT 1 FROM taskengine_leader AS leader
                WHERE leader.name = %(election)s AND leader.holder = %(holder)s
                  AND leader.term = %(term)s AND leader.expires_at > now()
                  FOR SHARE)
RETURNING worker_id, host, pid, last_heartbeat_at;


-- name: prune_workers
-- Forget workers gone for long, unless a running job still names them.
-- Index: taskengine_worker_alive_idx; taskengine_job_worker_idx for the NOT EXISTS.
DELETE FROM taskengine_worker AS worker
 WHERE worker.state IN ('stopped', 'dead')
   AND worker.last_heartbeat_at < now() - make_interval(secs => %(prune_after)s)
   AND NOT EXISTS (SELECT 1 FROM taskengine_job AS job
                    WHERE job.state = 'running' AND job.locked_by = worker.worker_id)
   AND EXISTS (SELECT 1 FROM taskengine_leader AS leader
                WHERE leader.name = %(election)s AND leader.holder = %(holder)s
                  AND leader.term = %(term)s AND leader.expires_at > now()
                  FOR SHARE)
RETURNING worker.worker_id;


-- name: enqueue_schedule_slot
-- One job per (schedule, slot), ever: ON CONFLICT on taskengine_job_schedule_slot_uniq
-- makes a second insert of the same slot (another leader, a restart, a retry) a no-op —
-- a unique constraint, never check-then-insert. The job is an ordinary job otherwise
-- (the NOTIFY trigger wakes workers on commit). Returns the id only when inserted.
-- Index: taskengine_job_schedule_slot_uniq (schedule_id, slot).
INSERT INTO taskengine_job (
    task_path, backend, queue, priority, args, kwargs, state, run_after, enqueued_at,
    attempts, max_attempts, timeout_seconds, retry_backoff_seconds, on_lease_expired,
    unique_key, tenant, acting_user_id, schedule_id, slot
)
SELECT %(task_path)s, %(backend)s, %(queue)s, %(priority)s, %(args)s::jsonb, %(kwargs)s::jsonb,
       'queued', %(slot)s, now(),
       0, %(max_attempts)s, %(timeout_seconds)s, %(retry_backoff_seconds)s, %(on_lease_expired)s,
       NULL, %(tenant)s, NULL, %(schedule_id)s, %(slot)s
 WHERE EXISTS (SELECT 1 FROM taskengine_leader AS leader
                WHERE leader.name = %(election)s AND leader.holder = %(holder)s
                  AND leader.term = %(term)s AND leader.expires_at > now()
                  FOR SHARE)
ON CONFLICT (schedule_id, slot) WHERE schedule_id IS NOT NULL DO NOTHING
RETURNING id;


-- name: record_missed_slot
-- A slot the misfire policy decided not to run, recorded once — and never a slot whose
-- job exists (a re-plan after last_slot_at was set back sees run slots as late again).
-- Index: taskengine_missed_slot_uniq (schedule_id, slot); taskengine_job_schedule_slot_uniq.
INSERT INTO taskengine_missed_slot (schedule_id, slot, reason, recorded_at)
SELECT %(schedule_id)s, %(slot)s, %(reason)s, now()
 WHERE EXISTS (SELECT 1 FROM taskengine_leader AS leader
                WHERE leader.name = %(election)s AND leader.holder = %(holder)s
                  AND leader.term = %(term)s AND leader.expires_at > now()
                  FOR SHARE)
   AND NOT EXISTS (SELECT 1 FROM taskengine_job AS job
                    WHERE job.schedule_id = %(schedule_id)s AND job.slot = %(slot)s)
ON CONFLICT (schedule_id, slot) WHERE schedule_id IS NOT NULL DO NOTHING
RETURNING id;


-- name: advance_schedule
-- Move last_slot_at forward only (compare-and-set), so a late or stale write can never
-- move a schedule back in time.
-- Index: primary key.
UPDATE taskengine_schedule
   SET last_slot_at = %(slot)s
 WHERE id = %(schedule_id)s
   AND (last_slot_at IS NULL OR last_slot_at < %(slot)s)
   AND EXISTS (SELECT 1 FROM taskengine_leader AS leader
                WHERE leader.name = %(election)s AND leader.holder = %(holder)s
                  AND leader.term = %(term)s AND leader.expires_at > now()
                  FOR SHARE)
RETURNING id;


-- name: prune_retention_batch
-- Retention's one batch, one statement: up to batch_size terminal jobs of one state
-- finished before the cutoff, locked (SKIP LOCKED: a job an operator is requeueing right
-- now is left for the next batch), and deleted with their attempt rows. The caller holds
-- the leader fence around it. FOR UPDATE re-checks the WHERE on the row's newest version,
-- so a job requeued meanwhile is not deleted; the DELETE's own state check says so again.
-- %(after)s is where the pass's previous batch stopped: the index scan starts there
-- instead of stepping over the entries of every row deleted before (dead until a vacuum).
-- Returns the count and the latest finished_at deleted (the next batch's %(after)s).
-- Index: taskengine_job_finished_idx (finished_at); the attempts by
-- task_execution_logs_job_attempt_uniq (job_id, attempt).
WITH batch AS (
    SELECT id
      FROM taskengine_job
     WHERE state = %(state)s
       AND finished_at >= %(after)s
       AND finished_at < now() - make_interval(secs => %(age_seconds)s)
     ORDER BY finished_at
     LIMIT %(batch_size)s
       FOR UPDATE SKIP LOCKED
), attempts_deleted AS (
    DELETE FROM task_execution_logs AS log
     USING batch
     WHERE log.job_id = batch.id
), jobs_deleted AS (
    DELETE FROM taskengine_job AS job
     USING batch
     WHERE job.id = batch.id
       AND job.state = %(state)s
    RETURNING job.finished_at
)
SELECT count(*) AS deleted, max(finished_at) AS last_finished_at FROM jobs_deleted;


-- name: tables_due_for_vacuum
-- The engine's two churning tables (every job is two non-HOT updates of taskengine_job
-- and one attempt row; retention deletes both) with at least %(dead_tuples)s dead
-- tuples by the cumulative statistics, that this role may vacuum (the table's owner or
-- the database's, or a member of their roles: superusers are members of every role),
-- and that no vacuum is working on now (pg_stat_progress_vacuum lists autovacuum's and
-- everyone else's). Most dead tuples first. Nothing here writes: the lease is not needed.
-- vacuum_count is how many manual vacuums the statistics have seen: table_vacuum_count
-- after the VACUUM tells one that ran from one SKIP_LOCKED skipped.
SELECT stats.relname AS table_name, stats.n_dead_tup AS dead_tuples, stats.vacuum_count
  FROM pg_stat_user_tables AS stats
  JOIN pg_class AS class ON class.oid = stats.relid
 WHERE stats.relid IN (to_regclass('taskengine_job'), to_regclass('task_execution_logs'))
   AND stats.n_dead_tup >= %(dead_tuples)s
   AND (pg_has_role(class.relowner, 'USAGE')
        OR pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE'))
   AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_vacuum AS running WHERE running.relid = stats.relid)
 ORDER BY stats.n_dead_tup DESC;


-- name: table_vacuum_count
-- A manual VACUUM reports itself to the statistics as it ends, so this, read right after
-- it (autocommit: a fresh snapshot of the statistics), has grown unless it was skipped.
SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = to_regclass(%(table)s);


-- name: vacuum_job_table
-- Outside any transaction (VACUUM refuses to run in one). SKIP_LOCKED: if a vacuum
-- started since the query above (autovacuum's, say), skip the table rather than wait for
-- it. ANALYZE too: the claim is planned per run (plan_cache_mode = force_custom_plan)
-- from these statistics, and with autovacuum off nothing else refreshes them.
VACUUM (SKIP_LOCKED, ANALYZE) taskengine_job;


-- name: pace_vacuum
-- The leader's VACUUM paced as autovacuum's is (VACUUM_COST_DELAY_MS, 2 ms by default, as
-- autovacuum_vacuum_cost_delay): after each vacuum_cost_limit's worth of page work (200
-- by default) it sleeps %(delay)s, so a vacuum of a big job table spreads over seconds at
-- part of a core instead of taking a whole one at once while claims and finishes wait
-- for CPU (docs/performance.md, "The leader's vacuum, paced"). For this session, until
-- unpace_vacuum; VACUUM runs outside transactions, so SET LOCAL cannot carry it.
SELECT set_config('vacuum_cost_delay', %(delay)s, false);


-- name: unpace_vacuum
RESET vacuum_cost_delay;


-- name: vacuum_attempt_table
-- As vacuum_job_table, for the attempt rows.
VACUUM (SKIP_LOCKED, ANALYZE) task_execution_logs;
