"""mkdocs hook: the figures that live beside the code and the benchmarks join the site as assets/."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
FIGURES = [
    "docs/explorer.png",
    "benchmarks/brats_samples.png",
    "benchmarks/lidc_samples.png",
    "benchmarks/lidc_curve.png",
]


def on_files(files, config, **kwargs):
    for figure in FIGURES:
        source = ROOT / figure
        if source.is_file():
            files.append(File.generated(config, f"assets/{source.name}", abs_src_path=str(source)))
    return files
