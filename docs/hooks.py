"""mkdocs hook: the figures that live beside the code and the benchmarks join the site as assets/."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
FIGURES = [
    "docs/explorer.png",
    "docs/sample_figure.png",
    "benchmarks/brats_samples.png",
    "benchmarks/brats_samples.from-the-deterministic-run-marginal-weight-1-mean-weight-1.png",
    "benchmarks/lidc_samples.png",
    "benchmarks/lidc_curve.png",
    "benchmarks/lidc_curve_models.png",
]


def on_files(files, config, **kwargs):
    for figure in FIGURES:
        source = ROOT / figure
        if source.is_file():
            files.append(File.generated(config, f"assets/{source.name}", abs_src_path=str(source)))
    return files


# Docstrings are written for reading beside the code, in Sphinx's roles (:func:`name`); the
# Markdown renderer leaves the role's name in front of the code. Drop it, and a leading ~ (Sphinx's
# "show the last part only"), so that the API pages read as the docstrings mean.
_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):<code>(~?)([^<]*)</code>")


def _code(match: re.Match) -> str:
    name = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
    return f"<code>{name}</code>"


def on_page_content(html, page, config, files, **kwargs):
    return _ROLE.sub(_code, html)
