"""taskengine: a durable, leased, Postgres-backed task engine behind django.tasks."""
