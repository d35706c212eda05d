"""The README's and the documentation's commands and examples are the ones that work."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = {path.name: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}


def blocks(language, text=None):
    texts = [README, *PAGES.values()] if text is None else [text]
    return [b for t in texts for b in re.findall(rf"```{language}\n(.*?)```", t, flags=re.S)]


def block_with(language, needle):
    """The one example holding ``needle`` (the README and a page may show the same one)."""
    (found,) = {b for b in blocks(language) if needle in b}
    return found


def test_the_python_example_runs(capsys):
    example = block_with("python", 'ssn.models.create("unet"')
    assert example in README  # the front page's 30-second example
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([4]) torch.Size([2, 64, 64])" in printed
    assert re.search(r"GED\^2\(16\) = \d\.\d{3} \+- \d\.\d{3} over 4 images", printed)


def test_ci_runs_the_readme_test_command():
    setup, test = blocks("bash", README)[:2]
    assert "pytest" in test
    assert test.strip() in (ROOT / ".ci" / "run").read_text()
    assert "ssn demo" in setup


def test_the_documented_commands_parse():
    """Every `ssn ...` line of the shell blocks of the README and the docs, and every flag of the
    command summary, is one the command line accepts (a misspelt documented flag fails here)."""
    import shlex

    from ssn.apps.cli import build_parser

    parser = build_parser()
    lines = [
        line.split("#")[0].strip().removeprefix(".venv/bin/") for block in blocks("bash") for line in block.splitlines()
    ]
    commands = [line for line in lines if line.startswith("ssn ")]
    assert any("--patch-size" in line for line in commands)
    for line in commands:
        parser.parse_args(shlex.split(line)[1:])
    # torchrun lines: torchrun's own parser takes them whole (it would read `--run` as its
    # `--run-path`), and the ssn command after `-m ssn` / `--no-python ssn` parses
    from torch.distributed.run import get_args_parser

    launches = [line[line.index("torchrun") :] for line in lines if "torchrun " in line]
    assert len(launches) >= 3 and any("--no-python" in line for line in launches)
    for line in launches:
        launch = get_args_parser().parse_args(shlex.split(line)[1:])
        assert launch.training_script == "ssn" and (launch.module or launch.no_python), line
        parser.parse_args(launch.training_script_args)
    (summary,) = [b for b in blocks("text") if b.startswith("ssn train")]
    command = None
    for line in summary.splitlines():
        words = line.split()
        if words and words[0] == "ssn":
            command = words[1]
        sub = parser._subparsers._group_actions[0].choices[command]
        known = {option for action in sub._actions for option in action.option_strings}
        for flag in re.findall(r"--[a-z0-9-]+", line):
            assert flag in known, f"ssn {command} has no {flag} (docs: {line.strip()})"


def test_the_steering_example_runs(capsys):
    example = block_with("python", "sample_with_marks")
    exec(compile(example, "docs/explorer.md", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"torch.Size\(\[16, 1, 128, 128\]\) \['(rejection|optimisation)'\] \[1.0\]", printed)


def test_the_readme_is_a_front_page_and_every_link_and_page_exists():
    assert len(README.splitlines()) <= 200
    for target in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / target).is_file(), target
    import yaml

    def pages(nav):
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from pages(value) if isinstance(value, list) else [value]

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))["nav"]
    listed = set(pages(nav))
    assert listed == set(PAGES), f"pages not in the nav: {set(PAGES) - listed}; missing files: {listed - set(PAGES)}"
    for name, text in PAGES.items():  # links between pages
        for target in re.findall(r"\]\(([a-z-]+\.md)", text):
            assert target in PAGES, f"{name} links to {target}"
