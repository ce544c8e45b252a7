-- Queue limits and per-key concurrency on PostgreSQL: the limited claim
-- (taskengine.db.limited_claim). The ordinary claim (jobs.sql) leaves
-- limited queues and keyed jobs alone and reports, in the same statement, whether there
-- are any for its queues (the fragment limits_waiting); only then does the worker run these, in
-- one transaction of their own:
-- 1. limited_queues locks the rows of the limited (and paused) queues among the wanted
--    ones, in name order (FOR UPDATE: claimers of one limited queue take turns);
-- 2. queued_keys lists the keys of due keyed jobs with their place in claim order and
--    their running jobs (no lock); the first keys that look free, up to the claim's room,
--    are try-locked by lock_keys (transaction-level advisory locks; a key another claimer
--    holds is skipped, never waited for, so a busy key blocks nothing behind it);
-- 3. running_by_queue / running_by_key count running jobs under those locks. Each is a
--    statement of its own, so (READ COMMITTED) it sees every claim committed before the
--    lock was granted: a count in the statement that took the lock would see only its
--    own snapshot, older than the lock;
-- 4. the candidates are read FOR UPDATE SKIP LOCKED, picked in Python within the
--    allowances, and leased by claim_limited, which re-checks state and due time;
-- 5. count_rate adds the starts to the queue's window counter (the row is locked).
-- now() is the transaction's start: the window, the counts and the attempts' start
-- times are all one instant of the database clock.


-- name: limits_waiting (fragment)
-- True when the wanted queues include a limited one, or a due keyed job waits in one
-- (paused or not: the limited claim then leaves a paused queue out at its first step;
-- testing the pause here measured 0.2 ms more planning on every claim). Index: the queue table's primary key; taskengine_job_key_queued_idx
-- (partial on the key, so it is empty, and this probe free, where no job has a key).
(EXISTS (SELECT 1 FROM taskengine_queue AS limited
          WHERE limited.name = ANY (%(queues)s::text[])
            AND NOT limited.paused
            AND (limited.concurrency_limit IS NOT NULL OR limited.rate_limit IS NOT NULL))
 OR EXISTS (SELECT 1 FROM taskengine_job AS keyed
             WHERE keyed.state = 'queued'
               AND keyed.concurrency_key IS NOT NULL
               AND keyed.queue = ANY (%(queues)s::text[])
               AND keyed.run_after <= now()))


-- name: limited_queues
-- Step 1. Paused rows are locked and returned too (the caller leaves their queues out).
-- now() is this transaction's start: a row whose window is newer than it (a claim that
-- began later took the lock first and counted starts there; this one's own window's
-- count is gone) leaves no room of the rate to this claim, and count_rate never moves
-- the window back.
SELECT queue.name, queue.paused, queue.concurrency_limit, queue.rate_limit,
       CASE WHEN queue.rate_window = floor(extract(epoch FROM now()) / COALESCE(queue.rate_period, 1))::bigint
            THEN queue.rate_count
            WHEN queue.rate_window > floor(extract(epoch FROM now()) / COALESCE(queue.rate_period, 1))::bigint
            THEN COALESCE(queue.rate_limit, 0)
            ELSE 0 END AS rate_used,
       floor(extract(epoch FROM now()) / COALESCE(queue.rate_period, 1))::bigint AS window_now
  FROM taskengine_queue AS queue
 WHERE queue.name = ANY (%(queues)s::text[])
   AND (queue.paused OR queue.concurrency_limit IS NOT NULL OR queue.rate_limit IS NOT NULL)
 ORDER BY queue.name
   FOR UPDATE


-- name: queued_keys
-- Step 2a, no lock taken: the distinct keys of queued keyed jobs in the given queues,
-- walked as a skip scan of taskengine_job_key_queued_idx (one min() probe per key, at
-- most %(max_keys)s keys per queue), each with its first due job in claim order (the
-- key's place in the claim and its limit: one ordered index probe per queue and key)
-- and its running jobs as this snapshot sees them (to pass over busy keys before
-- locking any). A key found in several queues comes once per queue.
WITH RECURSIVE keys(queue, key, n) AS (
    SELECT wanted.queue,
           (SELECT min(job.concurrency_key) FROM taskengine_job AS job
             WHERE job.state = 'queued' AND job.concurrency_key IS NOT NULL AND job.queue = wanted.queue),
           1
      FROM unnest(%(queues)s::text[]) AS wanted(queue)
    UNION ALL
    SELECT keys.queue,
           (SELECT min(job.concurrency_key) FROM taskengine_job AS job
             WHERE job.state = 'queued' AND job.concurrency_key IS NOT NULL AND job.queue = keys.queue
               AND job.concurrency_key > keys.key),
           keys.n + 1
      FROM keys
     WHERE keys.key IS NOT NULL AND keys.n < %(max_keys)s
),
found AS (
    SELECT keys.queue, keys.key FROM keys WHERE keys.key IS NOT NULL
)
SELECT found.key, head.priority, head.run_after, head.id, head.concurrency_limit,
       (SELECT count(*) FROM taskengine_job AS busy
         WHERE busy.state = 'running' AND busy.concurrency_key = found.key) AS running
  FROM found
 CROSS JOIN LATERAL (
        SELECT job.priority, job.run_after, job.id, job.concurrency_limit
          FROM taskengine_job AS job
         WHERE job.state = 'queued'
           AND job.queue = found.queue
           AND job.concurrency_key = found.key
           AND job.run_after <= now()
         ORDER BY job.priority DESC, job.run_after, job.id
         LIMIT 1
       ) AS head


-- name: lock_keys
-- Step 2b: try-lock the chosen keys (transaction-level advisory locks on hashtext(key));
-- a key another claimer holds is skipped, never waited for.
SELECT chosen.key
  FROM unnest(%(keys)s::text[]) AS chosen(key)
 WHERE pg_try_advisory_xact_lock(%(lock_namespace)s, hashtext(chosen.key))


-- name: running_by_queue
-- Step 3. Index: taskengine_job_worker_idx (every running row; they are few).
SELECT job.queue, count(*) AS running
  FROM taskengine_job AS job
 WHERE job.state = 'running' AND job.queue = ANY (%(queues)s::text[])
 GROUP BY job.queue


-- name: running_by_key
-- Step 3. Index: taskengine_job_key_running_idx.
SELECT job.concurrency_key AS key, count(*) AS running
  FROM taskengine_job AS job
 WHERE job.state = 'running' AND job.concurrency_key = ANY (%(keys)s::text[])
 GROUP BY job.concurrency_key


-- name: queue_candidates
-- Step 4, jobs without a key of the limited queues: up to each queue's allowance, in
-- claim order. Index: taskengine_job_claim_idx.
SELECT picked.id, picked.queue, picked.concurrency_key, picked.concurrency_limit, picked.priority, picked.run_after
  FROM unnest(%(queues)s::text[], %(allowances)s::integer[]) AS wanted(queue, allowance)
 CROSS JOIN LATERAL (
        SELECT job.id, job.queue, job.concurrency_key, job.concurrency_limit, job.priority, job.run_after
          FROM taskengine_job AS job
         WHERE job.state = 'queued'
           AND job.queue = wanted.queue
           AND job.concurrency_key IS NULL
           AND job.run_after <= now()
         ORDER BY job.priority DESC, job.run_after, job.id
         LIMIT wanted.allowance
           FOR UPDATE SKIP LOCKED
       ) AS picked


-- name: key_candidates
-- Step 4, keyed jobs of the keys this claim holds, in the given queues: up to each key's
-- allowance per queue, in claim order (one ordered probe of
-- taskengine_job_key_queued_idx per key and queue; the caller keeps the allowance).
SELECT picked.id, picked.queue, picked.concurrency_key, picked.concurrency_limit, picked.priority, picked.run_after
  FROM unnest(%(keys)s::text[], %(allowances)s::integer[]) AS wanted(key, allowance)
 CROSS JOIN unnest(%(queues)s::text[]) AS served(queue)
 CROSS JOIN LATERAL (
        SELECT job.id, job.queue, job.concurrency_key, job.concurrency_limit, job.priority, job.run_after
          FROM taskengine_job AS job
         WHERE job.state = 'queued'
           AND job.queue = served.queue
           AND job.concurrency_key = wanted.key
           AND job.run_after <= now()
         ORDER BY job.priority DESC, job.run_after, job.id
         LIMIT wanted.allowance
           FOR UPDATE SKIP LOCKED
       ) AS picked


-- name: claim_limited
-- Step 4: lease the picked jobs (ids in claim order, each with its queue) and log their
-- attempts, as the ordinary claim does (the UPDATE re-checks state = 'queued' and the due
-- time). The queues are re-read with this statement's snapshot, as the ordinary claim's
-- InitPlan does: a job of a queue paused since step 1, or limited since then without
-- this claim holding its row (%(counted)s: the rows step 1 locked), is left queued — the
-- steps before are many statements, and a pause or a limit committed meanwhile would
-- otherwise wait for the whole transaction instead of one statement.
WITH
candidates AS (
    SELECT picked.id
      FROM unnest(%(ids)s::bigint[], %(queues)s::text[]) AS picked(id, queue)
     WHERE picked.queue <> ALL (ARRAY(SELECT changed.name FROM taskengine_queue AS changed
                                       WHERE changed.paused
                                          OR ((changed.concurrency_limit IS NOT NULL OR changed.rate_limit IS NOT NULL)
                                              AND changed.name <> ALL (%(counted)s::text[]))))
),
-- @include claim_and_log_attempts
SELECT * FROM claimed


-- name: count_rate
-- Step 5: the starts of this claim in the queue's current window (row locked in step 1);
-- never into an older window than the row's (limited_queues then left no room).
UPDATE taskengine_queue
   SET rate_count = CASE WHEN rate_window = %(window)s THEN rate_count + %(started)s ELSE %(started)s END,
       rate_window = %(window)s
 WHERE name = %(name)s
   AND rate_window <= %(window)s
