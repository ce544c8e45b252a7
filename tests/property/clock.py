from taskengine.testing import TIMESTAMP_COLUMNS, advance_clock  # noqa: F401 - moved to the public test helpers
