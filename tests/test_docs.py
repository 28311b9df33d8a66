"""Every hook is documented: a docstring with an example in hookspecs.py and a README entry."""

import inspect

from pipeline import hookspecs
from tests.conftest import ROOT

HOOKS = [name for name, obj in vars(hookspecs).items() if name.startswith("nls_") and callable(obj)]


def test_there_are_hooks_for_every_stage():
    assert set(hookspecs.REGISTER_HOOKS.values()) <= set(HOOKS)
    assert len(HOOKS) >= 10


def test_every_hook_has_a_docstring_with_an_example():
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 40 and "Example" in doc, name


def test_every_hook_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [h for h in HOOKS if f"`{h}" not in readme]
    assert not missing, f"README.md does not document hooks: {missing}"


def test_readme_quickstart_commands():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
