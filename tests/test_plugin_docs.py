"""The plugin docs keep up with the hooks: every hook documented, exemplified and tested.

- docs/plugin_hooks.md has one section per hook, headed by its exact signature, naming each
  argument and the return value, with an example that registers against the hookspecs.
- tests/test_hooks.py has a ``test_hook_<name>`` per hook.
- docs/writing_plugins.md shows the example plugin package as it is in examples/.
"""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pluggy
import pytest

from salon.daemon.config import load_config
from salon.daemon.hooks import PluginSettings, hookspecs
from salon.daemon.hooks.manager import BUNDLED, _load_reference
from tests import test_hooks

ROOT = Path(__file__).resolve().parent.parent
HOOKS_DOC = ROOT / "docs" / "plugin_hooks.md"
WRITING_DOC = ROOT / "docs" / "writing_plugins.md"
EXAMPLE = ROOT / "examples" / "salon-plugin-hello"
SAMPLE_CONFIG = ROOT / "conf" / "salond.toml"

HEADING = re.compile(r"^## `(\w+)\(([^)]*)\)`$", re.MULTILINE)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def hook_names() -> list[str]:
    return sorted(
        name
        for name, value in vars(hookspecs).items()
        if inspect.isfunction(value) and hasattr(value, hookspecs.PROJECT + "_spec")
    )


HOOKS = hook_names()


def sections() -> dict[str, tuple[str, str]]:
    """Hook name -> (the arguments of its heading, the section's text)."""
    text = HOOKS_DOC.read_text(encoding="utf-8")
    found: dict[str, tuple[str, str]] = {}
    headings = list(HEADING.finditer(text))
    for index, heading in enumerate(headings):
        end = headings[index + 1].start() if index + 1 < len(headings) else len(text)
        body = text[heading.end() : end].split("\n# ", 1)[0]
        assert heading.group(1) not in found, f"{heading.group(1)} is documented twice"
        found[heading.group(1)] = (heading.group(2), body)
    return found


def test_the_groups_list_every_hook_once():
    grouped = [name for names in hookspecs.GROUPS.values() for name in names]
    assert sorted(grouped) == HOOKS
    assert len(grouped) == len(set(grouped))


def test_every_hook_is_documented_in_group_order():
    documented = sections()
    assert sorted(documented) == HOOKS, "docs/plugin_hooks.md and hookspecs.py disagree"
    in_order = [name for names in hookspecs.GROUPS.values() for name in names]
    assert list(documented) == in_order


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_section_has_signature_arguments_return_and_example(hook):
    arguments, body = sections()[hook]
    spec = inspect.signature(getattr(hookspecs, hook))
    assert arguments == ", ".join(spec.parameters), f"{hook}: heading is not the signature"
    for name in spec.parameters:
        if name != "api":
            assert re.search(rf"^- `{name}` \(`", body, re.MULTILINE), f"{hook}: `{name}` missing"
    assert "Returns " in body or "Returns `" in body, f"{hook}: return value not described"
    assert PYTHON_BLOCK.search(body), f"{hook}: no example"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    test = getattr(test_hooks, f"test_hook_{hook}", None)
    assert inspect.isfunction(test), f"tests/test_hooks.py has no test_hook_{hook}"


def test_the_examples_are_valid_implementations():
    """Each example runs, and pluggy accepts its implementations (names and arguments)."""
    blocks = PYTHON_BLOCK.findall(HOOKS_DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= len(HOOKS)
    implemented: set[str] = set()
    for index, code in enumerate(blocks):
        module = types.ModuleType(f"plugin_hooks_example_{index}")
        exec(compile(code, f"docs/plugin_hooks.md example {index + 1}", "exec"), vars(module))
        manager = pluggy.PluginManager(hookspecs.PROJECT)
        manager.add_hookspecs(hookspecs)
        manager.register(module)
        manager.check_pending()
        implemented.update(
            caller.name for caller in manager.get_hookcallers(module) or [] if caller.name
        )
    assert implemented == set(HOOKS)


def test_writing_plugins_shows_the_example_package_as_it_is():
    text = WRITING_DOC.read_text(encoding="utf-8")
    shown = {block.strip() for block in re.findall(r"^```\w*\n(.*?)^```$", text, re.M | re.S)}
    for path in ("pyproject.toml", "salon_plugin_hello/__init__.py"):
        source = (EXAMPLE / path).read_text(encoding="utf-8").strip()
        assert source in shown, f"docs/writing_plugins.md does not show {path} as it is"


class _KnownKeys(Exception):
    pass


class _KeyCatcher(PluginSettings):
    def check_known(self, keys: Any) -> None:
        raise _KnownKeys(list(keys))


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_the_sample_configuration_shows_every_bundled_plugin_setting(name):
    api = SimpleNamespace(config=load_config(None), settings=_KeyCatcher(name, {}))
    with pytest.raises(_KnownKeys) as caught:
        _load_reference(BUNDLED[name])(api)
    keys = caught.value.args[0]
    text = SAMPLE_CONFIG.read_text(encoding="utf-8")
    if keys:
        assert f"\n# [plugins.{name}]" in text
    for key in keys:
        assert f"\n# {key} = " in text or f"\n# [plugins.{name}.{key}]" in text, (
            f"conf/salond.toml does not show plugins.{name}.{key}"
        )
