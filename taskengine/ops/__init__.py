"""Operator tools: the writes an operator makes and the records they leave.

``operations`` (requeue, retry now, cancel one job), ``bulk`` and ``bulk_batches`` (the
same on a filter, as a resumable operation), ``job_filters`` (the filter and keyset
pagination they share with the console), ``audit`` (one row per operator write, in the
write's transaction), ``tenancy`` (who may see and change which tenants), ``backfill`` and
``reconcile/`` (data-consistency tools). The console, the admin and the management
commands call these; the leader runs unfinished bulk batches.
"""
