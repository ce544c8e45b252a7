-- What the pgqueuer phase (taskengine/bench/pgqueuer_drain.py) reads of pgqueuer's own
-- tables, under its default names: a completed job leaves the queue table, and the log
-- table gets a row per status change, its `created` the database's now() of the
-- statement that wrote it ('picked' by the dequeue, 'successful' by the completion).


-- name: pgqueuer_queued
SELECT EXISTS (SELECT 1 FROM pgqueuer);


-- name: pgqueuer_drained
-- Jobs completed, and the seconds from the first pick to the last completion.
SELECT count(*) FILTER (WHERE status = 'successful'),
       extract(epoch FROM max(created) FILTER (WHERE status = 'successful')
                          - min(created) FILTER (WHERE status = 'picked'))
FROM pgqueuer_log;
