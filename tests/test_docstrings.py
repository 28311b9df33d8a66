"""Every public function, class and method in ``pipeline/`` and ``plugins/`` has a docstring.

The rule, checked statically (no imports, so it runs in milliseconds):

* module-level functions and classes whose names do not start with ``_``;
* public methods (and properties) of those classes.

Exempt, each for a reason:

* ``nls_*`` hook implementations: their contract and example live in ``pipeline/hookspecs.py``;
* ``backward`` and ``extra_repr``: torch's own protocol, described by the class;
* ``forward`` of ``torch.autograd.Function`` subclasses: the class docstring gives the op;
* functions nested inside other functions (closures handed to nerfacc and the like).
"""

from __future__ import annotations

import ast

from tests.conftest import ROOT

PACKAGES = ("pipeline", "plugins")
EXEMPT_METHODS = {"backward", "extra_repr"}


def _public(name: str) -> bool:
    return not name.startswith("_")


def _is_autograd_function(cls: ast.ClassDef) -> bool:
    names = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in cls.bases}
    return "Function" in names


def undocumented(source: str) -> list[str]:
    """Qualified names in ``source`` that the rule above requires a docstring for and that lack one."""
    missing = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if _public(node.name) and not node.name.startswith("nls_") and ast.get_docstring(node) is None:
                missing.append(node.name)
        elif isinstance(node, ast.ClassDef) and _public(node.name):
            if ast.get_docstring(node) is None:
                missing.append(node.name)
            autograd = _is_autograd_function(node)
            for item in node.body:
                if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) or not _public(item.name):
                    continue
                if item.name in EXEMPT_METHODS or (autograd and item.name == "forward"):
                    continue
                if ast.get_docstring(item) is None:
                    missing.append(f"{node.name}.{item.name}")
    return missing


def test_the_rule_catches_what_it_should_and_exempts_what_it_says():
    source = '''
def build_x(cfg): return cfg
def nls_register_fields(): return []
def _helper(): pass
class Field:
    """Doc."""
    def forward(self, x): return x
    @property
    def size(self): return 1
    def backward(self): pass
    def _private(self): pass
class _Hidden:
    def forward(self, x): return x
class Op(torch.autograd.Function):
    """Doc."""
    @staticmethod
    def forward(ctx, x): return x
    @staticmethod
    def backward(ctx, g): return g
def documented():
    """Doc."""
    def inner(): pass
'''
    assert undocumented(source) == ["build_x", "Field.forward", "Field.size"]


def test_every_public_function_class_and_method_has_a_docstring():
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            missing += [f"{rel}:{name}" for name in undocumented(path.read_text())]
    assert not missing, "public names without a docstring:\n" + "\n".join(missing)
