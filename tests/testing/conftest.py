# The fixtures a project gets with pytest_plugins = ["taskengine.testing.pytest_plugin"]
# in its top-level conftest (pytest refuses pytest_plugins in a nested one).
from taskengine.testing.pytest_plugin import taskengine_clock, taskengine_jobs  # noqa: F401 - fixtures pytest finds by name
