-- The database clock: every lease, retry time, schedule slot and console age is
-- measured by it, never by a process's own clock.


-- name: db_now
-- statement_timestamp(), like Django's Now(): in autocommit it equals now(), and inside
-- a long transaction it still moves.
SELECT statement_timestamp();
