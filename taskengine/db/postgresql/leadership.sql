-- Leader election on the database clock (see docs/leadership.md). One row per election
-- name in taskengine_leader; term only ever grows. Every statement is a single
-- autocommit statement: no session state, no session-level advisory locks, so the
-- election works through PgBouncer in transaction mode.


-- name: leader_acquire
-- Take the election when its row is absent or expired; the new term is the old term
-- plus one. ON CONFLICT re-checks expires_at on the newest row version, so of two
-- candidates racing for an expired row exactly one wins. A maintenance statement of the
-- old term holds FOR SHARE on the row (see leader_fence), so a takeover waits for it
-- to commit: every write of term T commits before term T+1 begins.
-- Index: primary key (name).
INSERT INTO taskengine_leader AS leader (name, holder, term, acquired_at, renewed_at, expires_at)
VALUES (%(election)s, %(holder)s, 1, now(), now(), now() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE
   SET holder = EXCLUDED.holder,
       term = leader.term + 1,
       acquired_at = now(),
       renewed_at = now(),
       expires_at = EXCLUDED.expires_at
 WHERE leader.expires_at <= now()
RETURNING leader.term;


-- name: leader_renew
-- Compare-and-set on (holder, term) and a live lease: a leader whose row expired (or
-- was taken over) cannot renew; it must acquire again, under a new term.
-- Index: primary key (name).
UPDATE taskengine_leader
   SET renewed_at = now(),
       expires_at = now() + make_interval(secs => %(ttl)s)
 WHERE name = %(election)s
   AND holder = %(holder)s
   AND term = %(term)s
   AND expires_at > now()
RETURNING term;


-- name: leader_resign
-- Clean shutdown: expire our own lease so a successor can acquire at once.
-- Index: primary key (name).
UPDATE taskengine_leader
   SET expires_at = now()
 WHERE name = %(election)s
   AND holder = %(holder)s
   AND term = %(term)s
   AND expires_at > now()
RETURNING term;


-- name: leader_fence
-- Inside a maintenance transaction: is (holder, term) still the live leader? FOR SHARE
-- keeps the row until the transaction ends, so no takeover commits in between.
-- Index: primary key (name).
SELECT term
  FROM taskengine_leader
 WHERE name = %(election)s
   AND holder = %(holder)s
   AND term = %(term)s
   AND expires_at > now()
   FOR SHARE;


-- name: leader_current
-- Who leads now, on the database clock (read-only; the console and tests use it).
SELECT holder, term, expires_at, expires_at > now() AS live
  FROM taskengine_leader
 WHERE name = %(election)s;


