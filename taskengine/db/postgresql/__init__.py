"""The PostgreSQL store and its SQL (<concept>.sql, read by taskengine.queries)."""
