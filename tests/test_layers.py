"""The layering, read from the imports (ast): core -> stages -> pipeline -> front ends (the CLI, ``edgekd.api``)
-> benchmark scenarios.
A module may import its own layer or a lower one, never a higher one, and never another module's
``_private`` names."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edgekd", "specialists", "export", "benchmarks")
CORE = {"edgekd.errors", "edgekd.validation", "edgekd.losses", "edgekd.data", "edgekd.models", "edgekd.artifacts",
        "edgekd.cache", "edgekd.cachedir", "edgekd.distributed", "edgekd.teachers", "edgekd.training", "edgekd.teacher_training",
        "edgekd.device", "edgekd.outputs", "edgekd.config", "edgekd.manifest", "edgekd.imagefolder", "edgekd.synthetic", "edgekd.kd_models",
        "edgekd.targets", "edgekd.exported_teacher", "edgekd.records",
        "edgekd"}
STAGES = {"edgekd.distill", "edgekd.evaluate", "specialists", "export",
          "benchmarks.harness", "benchmarks.config", "benchmarks.runtimes", "benchmarks.mobile_runtimes", "benchmarks.report", "benchmarks.modelinfo", "benchmarks.timing"}
PIPELINE = {"edgekd.pipeline"}
CLI = {"edgekd.cli", "edgekd.clicommon", "edgekd.__main__", "edgekd.commands", "edgekd.api"}   # the front ends
LAYERS = ("core", "stage", "pipeline", "cli", "scenario")


def layer(module: str) -> str:
    for name, members in (("core", CORE), ("pipeline", PIPELINE), ("cli", CLI)):
        if module in members or any(module.startswith(m + ".") for m in members if m != "edgekd"):
            return name
    if module in STAGES or any(module.startswith(m + ".") for m in STAGES):
        return "stage"
    if module.startswith("benchmarks"):
        return "scenario"   # benchmarks' scenario scripts and their shared helpers
    return "core" if module == "edgekd" else "unknown"


def modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            yield name.removesuffix(".__init__"), path


def imports(path: Path):
    """(imported module, names) of every import of our packages in the file, at any depth; a module imported
    by name from its package (``from edgekd import pipeline``) counts as that module."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in PACKAGES:
                submodules = [alias.name for alias in node.names if f"{node.module}.{alias.name}" in KNOWN]
                yield node.module, [alias.name for alias in node.names if alias.name not in submodules]
                for sub in submodules:
                    yield f"{node.module}.{sub}", []
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield alias.name, []


MODULES = list(modules())
KNOWN = {name for name, _ in MODULES}


def test_every_module_has_a_layer():
    assert [name for name, _ in MODULES if layer(name) == "unknown"] == []


@pytest.mark.parametrize("name, path", MODULES, ids=[name for name, _ in MODULES])
def test_no_module_imports_a_higher_layer_or_a_private_name(name, path):
    mine = LAYERS.index(layer(name))
    for target, names in imports(path):
        assert LAYERS.index(layer(target)) <= mine, f"{name} ({layer(name)}) imports {target} ({layer(target)})"
        private = [n for n in names if n.startswith("_") and target != name]
        assert not private, f"{name} imports private {private} from {target}"


def test_the_rule_can_fail(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from edgekd import pipeline, errors\n")
    assert list(imports(sneaky)) == [("edgekd", []), ("edgekd.pipeline", []), ("edgekd.errors", [])]
    assert LAYERS.index(layer("edgekd.pipeline")) > LAYERS.index(layer("edgekd.teachers"))
    assert layer("specialists.combine") == "stage" and layer("benchmarks.spine_fmnist") == "scenario"
    assert layer("edgekd.commands.core") == "cli"
