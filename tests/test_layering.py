"""The layering: the maths and the models import without any pipeline package."""

import subprocess
import sys

PIPELINE = ("safetensors", "yaml", "tqdm", "tensorboard", "matplotlib", "PIL", "nibabel", "h5py", "monai")


def test_the_maths_and_the_models_need_only_torch_numpy_and_scipy():
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in PIPELINE)  # import of a None entry fails
    script = f"""
import sys
{blocked}
import torch, ssn
model = ssn.models.create("unet", num_classes=2, rank=3, features=(4, 8))
images, target = torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16))
model.loss(images, target).backward()
samples = model.sample_labels(images, 4)
print(ssn.metrics.generalized_energy_distance(samples[:, 0], target[:1]) >= 0)
print(sorted(m for m in sys.modules if m.split(".")[0] in {PIPELINE!r} and sys.modules[m] is not None))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "[]"]


# The package's own layers, lowest first: a module imports only from layers below its own (and
# from its own subpackage). The helpers at the bottom know nothing of the rest.
LAYERS = [
    {"_version", "errors", "randomness"},  # helpers
    {"distributed", "files", "progress"},
    {"distributions"},  # the maths: the distribution ...
    {"steering", "losses", "metrics"},  # ... and what is computed from it
    {"networks"},
    {"models"},
    {"data"},
    {"inference"},
    {"engine"},
    {"apps"},
    {"__main__"},
]


def _own_imports(path, package_root):
    """The top-level ssn modules that the module at ``path`` imports (relative imports resolved)."""
    import ast

    parts = list(path.relative_to(package_root).with_suffix("").parts)
    here = parts[:-1]  # the package the module is in (for __init__.py: the package itself)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = here[: len(here) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            found |= {target[0]} if target else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ssn"):
            found.add((node.module.split(".") + ["__init__"])[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("ssn.")}
    return found


def test_each_layer_imports_only_from_the_layers_below():
    from pathlib import Path

    import ssn

    root = Path(ssn.__file__).parent
    rank = {name: level for level, names in enumerate(LAYERS) for name in names}
    modules = {p for p in root.rglob("*.py") if p.name != "__init__.py" or p.parent != root}
    top_level = {p.relative_to(root).parts[0].removesuffix(".py") for p in modules}
    assert top_level <= set(rank), f"modules in no layer: {sorted(top_level - set(rank))}"
    wrong = []
    for path in sorted(modules):
        owner = path.relative_to(root).parts[0].removesuffix(".py")
        for target in _own_imports(path, root) - {owner}:
            if target not in rank or rank[target] >= rank[owner]:
                wrong.append(f"{path.relative_to(root)} imports ssn.{target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_layering_check_sees_a_violation(tmp_path):
    """The check above finds an upward import (so that its silence means something)."""
    package = tmp_path / "ssn"
    (package / "metrics").mkdir(parents=True)
    (package / "metrics" / "functional.py").write_text("from ..engine import train\nfrom . import regions\n")
    (package / "losses.py").write_text("from .distributions import LowRankLogitDistribution\nimport ssn.apps.cli\n")
    assert _own_imports(package / "metrics" / "functional.py", package) == {"engine", "metrics"}
    assert _own_imports(package / "losses.py", package) == {"distributions", "apps"}
