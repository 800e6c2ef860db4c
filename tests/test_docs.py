"""docs/architecture.md is in the repository, the README links it (not a path outside a clone), and every
command line of its CLI contract exists with the options it shows."""

from __future__ import annotations

import re
from pathlib import Path

from test_docker import problems

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"


def test_readme_links_the_architecture_in_the_repository():
    readme = (REPO / "README.md").read_text()
    assert "](docs/architecture.md" in readme
    assert "../shared" not in readme
    for target in re.findall(r"\]\(([^)#]+)", readme):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), target


def test_the_contract_block_names_real_commands_and_options():
    text = DOC.read_text()
    block = text.split("## 4. CLI contract", 1)[1].split("```")[1]
    argvs = []
    for line in block.strip().splitlines():
        cmd = re.split(r"\s{2,}", line.strip())[0]  # drop the description column
        words = [w for w in re.sub(r"\[|\]", " ", cmd).split() if w != "..."]
        argvs.append([w.split("|")[0] for w in words])
    assert {a[1] for a in argvs} >= {"devices", "profile", "plan", "export", "bench", "report", "sample"}
    assert problems(argvs) == []


def test_every_module_the_doc_names_exists():
    text = DOC.read_text()
    for mod in sorted(set(re.findall(r"`(fine_deploy(?:\.\w+)+)", text))):
        parts = mod.split(".")
        found = any((REPO.joinpath(*parts[:n]).with_suffix(".py")).is_file() or REPO.joinpath(*parts[:n]).is_dir()
                    for n in range(len(parts), 1, -1))
        assert found, mod
