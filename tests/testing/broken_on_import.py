"""A task module that fails at import (a bad setting, a missing service)."""

raise RuntimeError("this module fails at import")
