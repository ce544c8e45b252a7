-- Leader election for SQLite; see leadership.postgresql.sql. SQLite has one writer at
-- a time (BEGIN IMMEDIATE), so a fence check and the writes after it in the same
-- transaction cannot interleave with a takeover. The database clock is
-- strftime('%Y-%m-%d %H:%M:%f', 'now') in UTC, Django's storage format.


-- name: leader_acquire
-- Index: primary key (name).
INSERT INTO taskengine_leader (name, holder, term, acquired_at, renewed_at, expires_at)
VALUES (%(election)s, %(holder)s, 1,
        strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'),
        strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'),
        strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '+' || %(ttl)s || ' seconds'))
ON CONFLICT (name) DO UPDATE
   SET holder = excluded.holder,
       term = taskengine_leader.term + 1,
       acquired_at = excluded.acquired_at,
       renewed_at = excluded.renewed_at,
       expires_at = excluded.expires_at
 WHERE taskengine_leader.expires_at <= strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
RETURNING term;


-- name: leader_renew
-- Index: primary key (name).
UPDATE taskengine_leader
   SET renewed_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now'),
       expires_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '+' || %(ttl)s || ' seconds')
 WHERE name = %(election)s
   AND holder = %(holder)s
   AND term = %(term)s
   AND expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
RETURNING term;


-- name: leader_resign
-- Index: primary key (name).
UPDATE taskengine_leader
   SET expires_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
 WHERE name = %(election)s
   AND holder = %(holder)s
   AND term = %(term)s
   AND expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
RETURNING term;


-- name: leader_fence
-- Index: primary key (name).
SELECT term
  FROM taskengine_leader
 WHERE name = %(election)s
   AND holder = %(holder)s
   AND term = %(term)s
   AND expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now');


-- name: leader_current
SELECT holder, term, expires_at,
       expires_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now') AS live
  FROM taskengine_leader
 WHERE name = %(election)s;


