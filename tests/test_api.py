"""``edgekd.api``: the library in one import; its example runs as written (shortened)."""

from __future__ import annotations

import edgekd.api


def test_every_name_it_exports_is_there():
    assert all(hasattr(edgekd.api, name) for name in edgekd.api.__all__)
    assert callable(edgekd.api.distill) and callable(edgekd.api.train_teachers)   # functions, not modules


def test_its_example_runs(tmp_path, monkeypatch, capsys):
    example = "\n".join(line for line in edgekd.api.__doc__.splitlines() if line.startswith("    "))
    short = (example.replace("TrainConfig(epochs=5)", "TrainConfig(epochs=1)")
             .replace("baseline=True)", "baseline=True, recipe_search=False, train=TrainConfig(epochs=1))"))
    assert short != example
    monkeypatch.chdir(tmp_path)
    exec(compile("\n".join(line[4:] for line in short.splitlines()), "edgekd.api example", "exec"), {})
    student, baseline = map(float, capsys.readouterr().out.split())
    assert 0 < student <= 1 and 0 < baseline <= 1 and (tmp_path / "runs" / "student" / "manifest.json").is_file()
