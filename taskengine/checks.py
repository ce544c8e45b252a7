"""System checks (ids taskengine.E0xx / W0xx). Filled in by the migration-gate work."""
