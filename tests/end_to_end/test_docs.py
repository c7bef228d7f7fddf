"""The docs' stable anchors (issue 33): code cites `docs/journal.md#NAME`, never a BENCHMARKS section number, and
every anchor link in the repository's .md, .py and .sh files names an anchor that exists.

An anchor exists where the target file has an explicit `<a id="NAME"></a>` or a heading whose GitHub slug is NAME."""

import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
SECTION_CITATION = re.compile(r"BENCHMARKS(?:\.md)?,?\s+(?:section\s+)?\d+\.\d+|BENCHMARKS(?:\.md)?,?\s+section\b")
# a path (or bare name) of one of the repository's markdown files, then #anchor
ANCHOR_LINK = re.compile(r"((?:[\w.-]+/)*[\w.-]+\.md)#([\w-]+)")
IN_PAGE_LINK = re.compile(r"\]\(#([\w-]+)\)")


def repository_files(*suffixes: str) -> list[Path]:
    skip = {".git", ".venv", ".gpu", "bench-out", "runs", "node_modules", "__pycache__"}
    return sorted(p for p in ROOT.rglob("*") if p.suffix in suffixes and p.is_file()
                  and not skip.intersection(p.relative_to(ROOT).parts))


def github_slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The explicit <a id> anchors and the heading slugs (GitHub's: duplicates get -1, -2, ...) of a markdown file."""
    text = path.read_text()
    found = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    seen: dict[str, int] = {}
    in_code = False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            found.add(slug if n == 0 else f"{slug}-{n}")
            seen[slug] = n + 1
    return found


def target_of(citing: Path, name: str) -> Path | None:
    """The markdown file a link names: relative to the citing file, else to the repository root, else the one file
    of the repository with that name (a comment that names `journal.md` alone)."""
    for base in (citing.parent, ROOT):
        candidate = (base / name).resolve()
        if candidate.is_file():
            return candidate
    matches = [p for p in repository_files(".md") if p.name == Path(name).name]
    return matches[0] if len(matches) == 1 else None


def test_the_journal_gives_every_entry_an_explicit_anchor():
    journal = ROOT / "docs" / "journal.md"
    ids = re.findall(r"^<a id=\"([^\"]+)\"></a>$", journal.read_text(), flags=re.MULTILINE)
    assert len(ids) >= 36 and len(ids) == len(set(ids)), "one unique anchor per journal entry"
    assert {"learner-size", "skip-1-default", "bf16-cpu", "early-stopping"} <= set(ids)


def test_no_file_under_src_cites_a_benchmarks_section_number():
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
                 for p in repository_files(".py") if p.is_relative_to(ROOT / "src")
                 for i, line in enumerate(p.read_text().split("\n"), 1) if SECTION_CITATION.search(line)]
    assert not offenders, ("cite the journal's stable anchors (docs/journal.md#NAME), not section numbers:\n"
                           + "\n".join(offenders))


def test_every_anchor_link_points_at_an_anchor_that_exists():
    broken = []
    cache: dict[Path, set[str]] = {}
    for path in repository_files(".md", ".py", ".sh"):
        if path == Path(__file__).resolve():
            continue
        text = path.read_text()
        links = [(m.group(1), m.group(2)) for m in ANCHOR_LINK.finditer(text)]
        if path.suffix == ".md":
            links += [(path.name, name) for name in IN_PAGE_LINK.findall(text)]
        for name, anchor in links:
            target = path if name == path.name and (path.parent / name).resolve() == path else target_of(path, name)
            if target is None:
                if Path(name).name in {"journal.md", "BENCHMARKS.md", "cli.md", "README.md", "design.md"}:
                    broken.append(f"{path.relative_to(ROOT)}: {name}#{anchor}: no such file")
                continue
            if target not in cache:
                cache[target] = anchors(target)
            if anchor not in cache[target]:
                broken.append(f"{path.relative_to(ROOT)}: {name}#{anchor}")
    assert not broken, "links to anchors that do not exist:\n" + "\n".join(broken)


def test_benchmarks_md_opens_with_current_results_and_each_table_names_its_default():
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert text.startswith("# Benchmarks: current results")
    assert len(text.split("\n")) < 200
    blocks = re.split(r"\n\s*\n", text)
    for i, block in enumerate(blocks):
        if block.lstrip().startswith("|") and "|---" in block:
            before = "\n\n".join(blocks[max(0, i - 2):i])
            assert re.search(r"\*(?:The default|[^*]*default[^*]*)\*", before), f"a table without its default:\n{block[:200]}"


def test_every_journal_table_says_which_default_it_measured():
    lines = (ROOT / "docs" / "journal.md").read_text().split("\n")
    for i, line in enumerate(lines):
        if (line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---")
                and not lines[i - 1].startswith("|") and not line.startswith("| old section |")):  # the index
            context = "\n".join(lines[max(0, i - 3):i])
            assert "*Default measured" in context, f"docs/journal.md line {i + 1}: a table without its default"
