"""The README's commands and example are the ones that work."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_python_example_runs(capsys):
    example = blocks("python")[1]  # the first is the pretrained example (tests/test_pretrained.py runs it)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([4]) torch.Size([2, 64, 64])" in printed
    assert re.search(r"GED\^2\(16\) = \d\.\d{3} \+- \d\.\d{3} over 4 images", printed)


def test_ci_runs_the_readme_test_command():
    setup, test = blocks("bash")[:2]
    assert "pytest" in test
    assert test.strip() in (ROOT / ".ci" / "run").read_text()
    assert "ssn demo" in setup
