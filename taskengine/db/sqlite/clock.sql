-- The database clock (UTC, microsecond text, as the engine's SQL writes it).


-- name: db_now
SELECT strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now');
