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


def _readme_plugin_example() -> str:
    """The ``my_plugin.py`` code block of the README's "Writing a plugin" section."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("# my_plugin.py")
    return readme[start:readme.index("```", start)]


def test_the_readme_plugin_example_loads_without_torch_and_computes_its_loss(tmp_path):
    import torch

    from pipeline.testing import plugin_host
    from tests.conftest import cli_in_fresh_python

    (tmp_path / "my_plugin.py").write_text(_readme_plugin_example())
    rc, listing, heavy = cli_in_fresh_python(["--plugins-dir", str(tmp_path), "plugins", "--hook", "losses"])
    assert (rc, "opacity" in listing, "torch" in heavy) == (0, True, False), (rc, listing, heavy)

    comp = plugin_host(plugins_dirs=[tmp_path]).component("loss", "opacity")
    assert comp.description and comp.consumes == (frozenset({"render"}),)
    loss = comp.build(comp.config_class()(weight=0.5), None)
    value = loss({}, {"opacity": torch.tensor([[0.2], [0.6]])}, None)
    assert torch.isclose(value, torch.tensor(0.5 * 0.4))


def test_every_register_example_in_hookspecs_matches_the_builtin_it_names(nls_host):
    """The examples name real built-ins: their factory, produces and consumes must be those."""
    import textwrap

    for stage, hook in hookspecs.REGISTER_HOOKS.items():
        example = textwrap.dedent(inspect.getdoc(getattr(hookspecs, hook)).split("Example::", 1)[1])
        calls: list[tuple] = []
        scope: dict = {"hookimpl": lambda f: f}
        scope.update({n: object for n in ("BlenderConfig", "DenseGridConfig", "EikonalConfig")})
        exec(example, scope)
        scope[hook](lambda name, factory, **kw: calls.append((name, factory, kw)))
        assert len(calls) == 1, hook
        name, factory, kw = calls[0]
        real = nls_host.component(stage, name)
        consumes = {frozenset(a) if isinstance(a, (set, frozenset)) else frozenset({a})
                    for a in kw.get("consumes", ())}
        assert (factory, set(kw.get("produces", ())), consumes) == (real.factory, set(real.produces),
                                                                   set(real.consumes)), hook
