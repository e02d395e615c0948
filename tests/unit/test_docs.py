"""The documents: generated pages are current, links resolve, every environment variable is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.docgen import PAGES, main, render_pages, stale_pages
from tests.conftest import REPO

DOCUMENTS = sorted([REPO / "README.md", REPO / "BENCHMARKS.md", *(REPO / "docs").glob("*.md")])
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
#: Wire names between our own processes, not settings a user sets.
INTERNAL_VARIABLES = {"ORCHESTRATOR_SPEC_JSON", "ORCHESTRATOR_JOB_ID", "ORCHESTRATOR_EVENT", "ORCHESTRATOR_RESULT",
                      "ORCHESTRATOR_IGNORE"}


def test_the_generated_pages_are_current() -> None:
    stale = stale_pages(REPO)
    assert stale == [], f"{stale} out of date: run python -m orchestrator.docgen"


def test_the_generator_writes_every_page_and_check_notices_a_stale_one(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--check", "--root", str(tmp_path)]) == 0
    assert {path: (tmp_path / path).read_text() for path in PAGES} == render_pages()
    page = tmp_path / "docs" / "metrics.md"
    page.write_text(page.read_text().replace("orchestrator_epoch", "orchestrator_epochs"))
    assert stale_pages(tmp_path) == ["docs/metrics.md"]


def test_the_generated_pages_name_every_field_verb_and_metric() -> None:
    from orchestrator.cli import main as cli
    from orchestrator.metrics.names import ALL_PROMETHEUS_METRICS, TENSORBOARD_TAGS
    from orchestrator.spec.models import JobSpec

    pages = render_pages()
    for name in JobSpec.model_fields:
        assert f"`{name}" in pages["docs/spec-reference.md"], name
    assert "`training.learning_rate` | number | `0.001` | > 0; <= 10 |" in pages["docs/spec-reference.md"]
    for verb in cli.commands:
        if not verb.startswith("_"):
            assert f"## `orchestrator {verb}`" in pages["docs/cli.md"], verb
    for metric in ALL_PROMETHEUS_METRICS:
        assert f"| `{metric.name}` | {metric.kind} |" in pages["docs/metrics.md"]
    for tag in TENSORBOARD_TAGS.values():
        assert f"`{tag}`" in pages["docs/metrics.md"]


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", _CODE_BLOCK.sub("", path.read_text(encoding="utf-8")), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_resolves(document: Path) -> None:
    text = _CODE_SPAN.sub("", _CODE_BLOCK.sub("", document.read_text(encoding="utf-8")))
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked here (no network)
        file_part, _, anchor = target.partition("#")
        resolved = (document.parent / file_part).resolve() if file_part else document
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert broken == []


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    documented = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    used = set()
    for source in (REPO / "orchestrator").rglob("*.py"):
        used |= set(re.findall(r"\bORCHESTRATOR_[A-Z0-9_]+\b", source.read_text(encoding="utf-8")))
    missing = sorted(used - INTERNAL_VARIABLES - set(re.findall(r"\bORCHESTRATOR_[A-Z0-9_]+\b", documented)))
    assert missing == []
    assert "ORCHESTRATOR_HOME" in used  # the scan sees the code
