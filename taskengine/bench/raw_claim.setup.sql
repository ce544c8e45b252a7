-- The scratch table behind raw_claim_limit_per_s (loaded by taskengine.bench into a
-- database of its own, dropped after the run). It has what the engine's claim touches
-- and no more: the columns a claim reads and writes, the primary key and the partial
-- index the claim walks, so the figure is what plain SQL on this machine can do.


-- name: create_table
CREATE TABLE raw_job (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    state text NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    run_after timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    worker_id text,
    lease_expires_at timestamptz,
    finished_at timestamptz,
    args jsonb NOT NULL DEFAULT '[]'
);


-- name: load_queued
-- Loaded before the index exists (one sort instead of a million index inserts).
INSERT INTO raw_job (queue, state)
SELECT 'raw', 'queued' FROM generate_series(1, %(rows)s);


-- name: create_claim_index
-- The order the claim takes jobs in; partial, like the engine's queued index.
CREATE INDEX raw_job_claim ON raw_job (queue, priority, run_after, id) WHERE state = 'queued';


-- name: settle
-- As the benchmark settles taskengine_job between phases.
VACUUM ANALYZE raw_job;


-- name: count_queued
SELECT count(*) FROM raw_job WHERE state = 'queued';
