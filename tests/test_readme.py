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
