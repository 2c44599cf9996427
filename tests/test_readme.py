"""The README's quickstart and CI run the same test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    quickstart = [b for b in blocks if b.startswith("python3 -m venv")]
    assert len(quickstart) == 2, "the quickstart is two commands"
    assert "edgekd pipeline" in quickstart[0] and "pytest" in quickstart[1]
    assert quickstart[1] in (ROOT / ".ci" / "run").read_text()


def named_results(text: str) -> set[str]:
    """The results a document names in code spans: `benchmarks/results/x.md`, or a bare `spine_*.md`
    (results are named module_variant; an artifact's own files, `summary.md`, `manifest.json`, are not)."""
    names = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        for name in re.findall(r"(?:^|[\s(,])([\w./*-]+\.(?:md|json|png))(?=$|[\s),;:])", span):
            if name.startswith("benchmarks/") or ("/" not in name and "_" in name and not name.startswith(".")):
                names.add(name)
    return names


def resolves(name: str) -> bool:
    """A path from the repository root, or a result's name under benchmarks/results/ (a glob: at least one)."""
    results = ROOT / "benchmarks" / "results"
    return any(list(base.glob(name)) for base in (ROOT, results)) or any(results.rglob(Path(name).name))


def test_every_result_the_readme_and_docs_name_is_committed():
    """A figure in the README or docs/ points at its committed result; a renamed or moved file would
    leave the claim without its source."""
    missing = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        gone = sorted(n for n in named_results(doc.read_text()) if not resolves(n))
        if gone:
            missing[doc.name] = gone
    assert not missing, f"named but not in the repository: {missing}"
