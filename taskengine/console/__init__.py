"""The operator console: HTML pages (views), the JSON API (api), their shared read
models (reads, serialize, filters, counts) and access rules (access). Writes go through
taskengine.operations only. Reconcile and backfill pages live in reconcile.py and
backfill.py."""
