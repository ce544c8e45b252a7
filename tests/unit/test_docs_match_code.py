"""Docs are part of the change: every setting and command is documented."""

from pathlib import Path

from taskengine.conf import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]


def test_every_taskengine_setting_is_in_the_readme_configuration_table():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- settings-table -->")[1].split("<!-- /settings-table -->")[0]
    missing = [name for name in DEFAULTS if f"`{name}`" not in table]
    assert not missing, f"README configuration table lacks: {missing}"


def test_every_management_command_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    commands = [p.stem for p in (ROOT / "taskengine/management/commands").glob("*.py") if p.stem != "__init__"]
    missing = [c for c in commands if f"`{c}`" not in readme]
    assert not missing, f"README lacks commands: {missing}"


def test_every_environment_variable_read_by_settings_is_in_the_readme():
    import re

    settings_py = (ROOT / "project/settings.py").read_text()
    names = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"', settings_py))
    names |= set(re.findall(r"^\s+([A-Z_]+)=\(", settings_py, re.MULTILINE))
    loop = re.search(r"for _name in \((.*?)\):", settings_py, re.S)
    names |= {f"TASKENGINE_{n}" for n in re.findall(r'"([A-Z_]+)"', loop.group(1))} if loop else set()
    readme = (ROOT / "README.md").read_text()
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"README lacks environment variables: {missing}"
