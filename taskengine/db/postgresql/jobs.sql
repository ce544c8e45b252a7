-- Job lifecycle queries for PostgreSQL. One named block per query; queries.py loads
-- them by name. Conventions: time is always now() (the database clock), parameters are
-- named, every transition is compare-and-set on the expected state (and, for a running
-- job, on the fencing token: locked_by + attempts + a live lease).


-- name: insert_jobs
-- Enqueue one or many jobs in a single round trip: the rows arrive as one JSON array
-- (parsed by Postgres in C, far cheaper than adapting a dozen parameter arrays). Rows
-- with a unique key held by a live job are skipped (ON CONFLICT on
-- taskengine_job_unique_live_key); the caller then looks the holder up. Workers are
-- woken by the statement trigger taskengine_job_notify (migration 0004) on commit.
INSERT INTO taskengine_job (
    task_path, backend, queue, priority, args, kwargs, state, run_after, enqueued_at,
    attempts, max_attempts, timeout_seconds, retry_backoff_seconds, on_lease_expired,
    unique_key, tenant, acting_user_id, concurrency_key, concurrency_limit
)
SELECT n.task_path, n.backend, n.queue, n.priority, n.args, n.kwargs, 'queued',
       COALESCE(n.run_after, now()), now(),
       0, n.max_attempts, n.timeout_seconds, n.retry_backoff_seconds, n.on_lease_expired,
       n.unique_key, n.tenant, n.acting_user_id, n.concurrency_key, n.concurrency_limit
  FROM ROWS FROM (
           jsonb_to_recordset(%(jobs)s::jsonb)
           AS (task_path text, backend text, queue text, priority smallint, args jsonb,
               kwargs jsonb, run_after timestamptz, max_attempts integer, timeout_seconds float8,
               retry_backoff_seconds float8, on_lease_expired text, unique_key text,
               tenant text, acting_user_id text, concurrency_key text, concurrency_limit integer)
       ) WITH ORDINALITY
       AS n(task_path, backend, queue, priority, args, kwargs, run_after, max_attempts,
            timeout_seconds, retry_backoff_seconds, on_lease_expired, unique_key, tenant,
            acting_user_id, concurrency_key, concurrency_limit, position)
 ORDER BY n.position
ON CONFLICT (unique_key) WHERE state IN ('queued', 'running') AND unique_key IS NOT NULL DO NOTHING
RETURNING id, unique_key, enqueued_at;


-- name: insert_job
-- One job without a unique key (the common enqueue()): a plain prepared VALUES insert,
-- no JSON document to parse and no ON CONFLICT (which would make every insert a
-- speculative one). Outside a transaction it runs through libpq.run.
-- @include insert_one_job
RETURNING id, unique_key, enqueued_at;


-- name: insert_job_unique
-- One job with a unique key: skipped when a live job holds the key (ON CONFLICT on
-- taskengine_job_unique_live_key). Same result shape as insert_jobs.
-- @include insert_one_job
ON CONFLICT (unique_key) WHERE state IN ('queued', 'running') AND unique_key IS NOT NULL DO NOTHING
RETURNING id, unique_key, enqueued_at;


-- name: insert_one_job (fragment)
-- The shared head of insert_job and insert_job_unique.
INSERT INTO taskengine_job (
    task_path, backend, queue, priority, args, kwargs, state, run_after, enqueued_at,
    attempts, max_attempts, timeout_seconds, retry_backoff_seconds, on_lease_expired,
    unique_key, tenant, acting_user_id, concurrency_key, concurrency_limit
)
VALUES (
    %(task_path)s, %(backend)s, %(queue)s, %(priority)s, %(args)s::jsonb, %(kwargs)s::jsonb, 'queued',
    COALESCE(%(run_after)s::timestamptz, now()), now(),
    0, %(max_attempts)s, %(timeout_seconds)s::float8, %(retry_backoff_seconds)s::float8,
    %(on_lease_expired)s, %(unique_key)s::text, %(tenant)s::text, %(acting_user_id)s::text,
    %(concurrency_key)s::text, %(concurrency_limit)s::integer
)


-- name: reserve_job_ids
-- The bulk path (COPY) writes ids and times itself: take %(count)s ids from the job
-- sequence and the transaction's now() as every row's enqueued_at (the same value an
-- INSERT in this transaction would store). The caller sorts the ids (they come in
-- order in practice, and Python's sort of a sorted list is one pass; ORDER BY here
-- cost a sort of its own, ~0.1 µs a job).
SELECT now() AS enqueued_at, array_agg(reserved.id) AS ids
  FROM (SELECT nextval((SELECT pg_get_serial_sequence('taskengine_job', 'id'))::regclass) AS id
          FROM generate_series(1, %(count)s)) AS reserved;


-- name: copy_jobs
-- Bulk enqueue without unique keys: rows streamed with COPY, which Postgres parses
-- while the client is still formatting the next rows. Ids and enqueued_at come from
-- reserve_job_ids in the same transaction; the statement trigger taskengine_job_notify
-- wakes workers on commit, as for an INSERT.
COPY taskengine_job (
    id, task_path, backend, queue, priority, args, kwargs, state, run_after, enqueued_at,
    attempts, max_attempts, timeout_seconds, retry_backoff_seconds, on_lease_expired,
    unique_key, tenant, acting_user_id, concurrency_key, concurrency_limit
) FROM STDIN


-- name: worker_planner_settings
-- The planner settings of a worker's own connections: its loop's (claims, heartbeats,
-- releases) and its completer's (finishes), set once per connection, outside a
-- transaction (store.worker_connection; PostgresStore.before_statement). Those connections
-- run the engine's statements, never a handler's; a project's receivers of task_started
-- and task_finished, which the worker sends from those threads, run on them too.
-- Why: a queue's statistics are stale by nature. Taken while the queue was nearly empty
-- (a healthy queue's usual state; every start of the benchmark's phases), they count
-- fewer queued or running jobs than a claim or a finish touches, and PostgreSQL chose
-- sequential scans for the next burst's statements, until the next ANALYZE: a claim beside
-- a claim index with many pages (a B-tree keeps the pages of every backlog it held) was
-- priced as reading every page, and planned as a scan of the whole table and a sort of
-- every queued row; a finish scanned the table and the attempt rows once per batch
-- (docs/performance.md, "Statements planned on stale statistics"). Off, not forbidden: a
-- statement with no index to use still scans (the claim's look at the few queue rows
-- does), but PostgreSQL then prices it at 10^10, far past jit_above_cost, and
-- JIT-compiled every claim (300 ms each). So JIT is off too: no statement of the engine's
-- is long enough to gain from it.
SET enable_seqscan = off; SET enable_bitmapscan = off; SET jit = off


-- name: claim_jobs
-- Lease up to %(limit)s due jobs from the given queues in one statement, and write the
-- attempt's execution log row in the same statement.
WITH
-- @include claim_candidates
-- @include claim_and_log_attempts
-- @include claim_jobs_result


-- name: claim_jobs_advisory
-- The same claim through transaction-scoped advisory locks, for extreme contention
-- (USE_ADVISORY_LOCKS=1).
WITH
-- @include claim_candidates_advisory
-- @include claim_and_log_attempts
-- @include claim_jobs_result


-- name: finish_and_claim
-- A worker's batch in one statement (one round trip, one commit): write the finished
-- attempts (fenced, as finish_jobs) and lease up to %(limit)s due jobs (as claim_jobs).
-- Both parts see the statement's one snapshot: the claim never picks a row the finish
-- writes (a retry queued by it is claimed by a later statement), and neither locks a
-- row the other one does (the finish takes this worker's running rows, the claim queued
-- ones). Rows come back as the claim's columns plus finished_state and finished_at:
-- a claimed job has finished_state NULL; a finished one has its id, finished_state and
-- finished_at, and NULL in every claim column.
WITH
-- @include finish_outcomes
,
-- @include claim_candidates
-- @include claim_and_log_attempts
-- @include finish_and_claim_result


-- name: finish_and_claim_advisory
-- finish_and_claim with the advisory-lock claim (USE_ADVISORY_LOCKS=1).
WITH
-- @include finish_outcomes
,
-- @include claim_candidates_advisory
-- @include claim_and_log_attempts
-- @include finish_and_claim_result


-- name: claim_jobs_result (fragment)
-- The claimed jobs, and a row of NULLs when limited queues or keyed jobs wait for the
-- limited claim (taskengine.limits).
SELECT * FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL
 WHERE
-- @include limits_waiting


-- name: finish_and_claim_result (fragment)
-- The rows of finish_and_claim: the claimed jobs, then the finished ones.
SELECT claimed.*, NULL::text AS finished_state, NULL::timestamptz AS finished_at
  FROM claimed
UNION ALL
SELECT finished.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, finished.state, finished.finished_at
  FROM finished
UNION ALL
-- The limited claim's turn (as in claim_jobs_result): finished_state 'limits'.
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, 'limits', NULL
 WHERE
-- @include limits_waiting


-- name: claim_wanted_queues (fragment)
-- The ordinary claim's queues: the wanted ones less the paused and the limited ones
-- (concurrency or rate: the limited claim, db/limited_claim.py, takes those), read once
-- per claim (an InitPlan over the few queue rows), never per job row.
SELECT wanted.queue
  FROM unnest(%(queues)s::text[]) AS wanted(queue)
 WHERE wanted.queue <> ALL (ARRAY(SELECT held.name FROM taskengine_queue AS held
                                   WHERE held.paused
                                      OR held.concurrency_limit IS NOT NULL
                                      OR held.rate_limit IS NOT NULL))


-- name: claim_candidates (fragment)
-- The jobs a claim leases: up to %(limit)s due jobs of the given queues, highest priority
-- first, locked with FOR UPDATE SKIP LOCKED.
-- Index: taskengine_job_claim_idx (queue, priority DESC, run_after, id) WHERE queued —
-- one ordered index scan per queue (the LATERAL), stopping after %(limit)s rows.
-- Paused and limited queues are dropped from the wanted list first (claim_wanted_queues).
-- Jobs with a concurrency key are left to the limited claim too (a filter on the
-- same index scan). The statement's snapshot decides: a pause committed before the claim began
-- is honoured (docs/queues.md).
candidates AS (
    SELECT picked.id
      FROM (
           -- @include claim_wanted_queues
           ) AS wanted
     CROSS JOIN LATERAL (
            SELECT job.id, job.priority, job.run_after
              FROM taskengine_job AS job
             WHERE job.state = 'queued'
               AND job.queue = wanted.queue
               AND job.concurrency_key IS NULL
               AND job.run_after <= now()
             ORDER BY job.priority DESC, job.run_after, job.id
             LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED
           ) AS picked
     ORDER BY picked.priority DESC, picked.run_after, picked.id
     LIMIT %(limit)s
),


-- name: claim_candidates_advisory (fragment)
-- The candidates through transaction-scoped advisory locks, for extreme contention
-- (USE_ADVISORY_LOCKS=1): candidates are skipped when another claimer holds their
-- advisory lock, and the UPDATE re-checks state = 'queued' and the due time on the
-- newest row version, so a job claimed (or queued for a later retry) and committed
-- meanwhile is not taken. xact locks end with the statement's transaction and never
-- leak through PgBouncer.
-- Index: taskengine_job_claim_idx. Paused queues are dropped as in claim_candidates.
candidates AS (
    SELECT picked.id
      FROM (
           -- @include claim_wanted_queues
           ) AS wanted
     CROSS JOIN LATERAL (
            SELECT job.id, job.priority, job.run_after
              FROM taskengine_job AS job
             WHERE job.state = 'queued'
               AND job.queue = wanted.queue
               AND job.concurrency_key IS NULL
               AND job.run_after <= now()
               AND pg_try_advisory_xact_lock(%(lock_namespace)s, (job.id %% 2147483647)::integer)
             ORDER BY job.priority DESC, job.run_after, job.id
             LIMIT %(limit)s
           ) AS picked
     ORDER BY picked.priority DESC, picked.run_after, picked.id
     LIMIT %(limit)s
),


-- name: claim_and_log_attempts (fragment)
-- The shared tail of the claims (claim_jobs, claim_jobs_advisory, finish_and_claim*):
-- lease the candidates, start their attempts, write the attempt rows (claim_logged).
-- The statement is prepared, and PostgreSQL may keep a generic plan made without the
-- LIMIT, so the leased rows are reached by primary key whatever the statistics say:
-- - named by an id array, not joined to the candidates (a join sized by a guessed
--   LIMIT became a hash join over a sequential scan of every queued row: 10 ms per
--   claim at 40,000 rows);
-- - the state is re-checked as "(state = 'queued') IS TRUE", which the planner cannot
--   match to the predicate of the partial claim index, so it never scans that whole
--   index instead (with statistics that counted few queued rows it did).
-- The due time is re-checked with the state: the advisory path locks no rows while it
-- picks, so a candidate can be claimed, fail and be queued for a later retry before this
-- UPDATE reaches it (the UPDATE re-evaluates its WHERE on that newest version, not the
-- candidates' query).
claimed AS (
    UPDATE taskengine_job AS job
       SET state = 'running',
           attempts = job.attempts + 1,
           locked_by = %(worker_id)s,
           lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
           started_at = COALESCE(job.started_at, now()),
           last_attempted_at = now()
     WHERE job.id = ANY (ARRAY(SELECT candidates.id FROM candidates))
       AND (job.state = 'queued') IS TRUE
       AND job.run_after <= now()
 RETURNING job.id, job.task_path, job.backend, job.queue, job.priority,
           -- As text, decoded per row in Python: a row that will not decode fails its
           -- attempt instead of failing the fetch of the whole (committed) claim.
           job.args::text AS args, job.kwargs::text AS kwargs,
           job.attempts, job.max_attempts, job.timeout_seconds, job.retry_backoff_seconds,
           job.enqueued_at, job.started_at, job.last_attempted_at, job.run_after,
           job.tenant, job.acting_user_id, job.on_lease_expired, job.unique_key
),
claim_logged AS (
    INSERT INTO task_execution_logs (job_id, attempt, worker_id, started_at, error_message,
                                     traceback, user_id, user_id_str)
    SELECT claimed.id, claimed.attempts, %(worker_id)s, claimed.last_attempted_at, '', '',
           CASE WHEN claimed.acting_user_id ~ '^-?[0-9]{1,18}$'
                THEN claimed.acting_user_id::bigint END,
           claimed.acting_user_id
      FROM claimed
)


-- name: extend_leases
-- Heartbeat: extend the live leases this worker still holds. A job missing from the
-- result has lost its lease (expired, recovered, or finished elsewhere).
-- Index: primary key only. Like finish_jobs and release_jobs it tests the lease, not
-- the state: the CHECK constraint taskengine_job_lease_iff_running makes a lease
-- imply state = 'running', and without that predicate no partial index of running
-- rows (taskengine_job_worker_idx) can be planned. With it, a generic plan made when
-- the statistics counted few running rows scanned that index — every dead entry of
-- every job this worker ever ran — on each call.
UPDATE taskengine_job AS job
   SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
  FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS held(id, attempt)
 WHERE job.id = held.id
   AND job.attempts = held.attempt
   AND job.locked_by = %(worker_id)s
   AND job.lease_expires_at > now()
RETURNING job.id, job.cancel_requested_at IS NOT NULL AS cancel_requested;


-- name: finish_jobs
-- Fenced completion of a batch of attempts. A row is written only while the worker
-- still holds a live lease under the same attempt number; otherwise nothing changes and
-- the id is missing from the result. A retry of a job whose cancellation was requested
-- meanwhile ends cancelled instead.
-- Index: primary key; task_execution_logs_job_attempt_uniq. The lease, not the state,
-- is tested (see extend_leases).
WITH
-- @include finish_outcomes
SELECT id, state, finished_at FROM finished;


-- name: finish_outcomes (fragment)
-- The fenced writes of finish_jobs and finish_and_claim (CTEs outcome, finished,
-- finish_logged).
outcome AS (
    SELECT *
      FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(states)s::text[],
                  %(outcomes)s::text[], %(retry_delays)s::float8[], %(return_values)s::jsonb[],
                  %(error_classes)s::text[], %(error_messages)s::text[], %(tracebacks)s::text[])
           AS o(id, attempt, next_state, outcome, retry_delay, return_value, error_class,
                error_message, traceback)
),
finished AS (
    UPDATE taskengine_job AS job
       SET state = CASE WHEN outcome.next_state = 'queued' AND job.cancel_requested_at IS NOT NULL
                        THEN 'cancelled' ELSE outcome.next_state END,
           finished_at = CASE WHEN outcome.next_state = 'queued' AND job.cancel_requested_at IS NULL
                              THEN NULL ELSE now() END,
           run_after = CASE WHEN outcome.next_state = 'queued' AND job.cancel_requested_at IS NULL
                            THEN now() + make_interval(secs => outcome.retry_delay)
                            ELSE job.run_after END,
           return_value = outcome.return_value,
           locked_by = NULL,
           lease_expires_at = NULL
      FROM outcome
     WHERE job.id = outcome.id
       AND job.attempts = outcome.attempt
       AND job.locked_by = %(worker_id)s
       AND job.lease_expires_at > now()
 RETURNING job.id, job.attempts, job.state, job.finished_at
),
-- Only the attempt that won: a batch may hold a stale outcome of the same job too (its
-- attempt lost to recovery, the retry claimed again by this worker), whose log row is
-- already closed and must stay as recovery wrote it.
finish_logged AS (
    UPDATE task_execution_logs AS log
       SET finished_at = now(),
           outcome = CASE WHEN finished.state = 'cancelled' THEN 'cancelled' ELSE outcome.outcome END,
           error_class = outcome.error_class,
           error_message = outcome.error_message,
           traceback = outcome.traceback
      FROM outcome
      JOIN finished ON finished.id = outcome.id AND finished.attempts = outcome.attempt
     WHERE log.job_id = outcome.id
       AND log.attempt = outcome.attempt
)


-- name: release_jobs
-- Graceful shutdown: hand unfinished jobs back to the queue at once. A released attempt
-- does not count against the job's budget (max_attempts grows by one), since the job
-- did not fail. A job whose cancellation was requested ends cancelled instead (its
-- worker had not seen the request yet): released, it would run again. Fenced like
-- finish_jobs (the lease, not the state; see extend_leases); the cancel is read from
-- the row version the UPDATE locks, so a request committed meanwhile is honoured.
WITH released AS (
    UPDATE taskengine_job AS job
       SET state = CASE WHEN job.cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE 'queued' END,
           finished_at = CASE WHEN job.cancel_requested_at IS NOT NULL THEN now() END,
           run_after = CASE WHEN job.cancel_requested_at IS NOT NULL THEN job.run_after ELSE now() END,
           max_attempts = CASE WHEN job.cancel_requested_at IS NOT NULL
                               THEN job.max_attempts ELSE job.max_attempts + 1 END,
           locked_by = NULL,
           lease_expires_at = NULL
      FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS held(id, attempt)
     WHERE job.id = held.id
       AND job.attempts = held.attempt
       AND job.locked_by = %(worker_id)s
       AND job.lease_expires_at > now()
 RETURNING job.id, job.attempts, job.state, job.finished_at
),
attempt_logged AS (
    UPDATE task_execution_logs AS log
       SET finished_at = now(),
           outcome = CASE WHEN released.state = 'cancelled' THEN 'cancelled' ELSE 'released' END,
           error_class = CASE WHEN released.state = 'cancelled' THEN %(cancel_error_class)s::text END,
           error_message = CASE WHEN released.state = 'cancelled' THEN %(cancel_error_message)s::text
                                ELSE log.error_message END
      FROM released
     WHERE log.job_id = released.id AND log.attempt = released.attempts
)
SELECT id, state, finished_at FROM released;
