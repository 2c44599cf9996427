"""Each paper-reproduction scenario under benchmarks/ runs end to end in its --smoke mode (digits)."""

import json

import pytest


@pytest.mark.parametrize("module", ["spine_fmnist", "omitted_class", "soft_regularizer", "ddp_checkpoint"])
def test_scenario_smoke(tmp_path, module, capsys):
    import importlib

    scenario = importlib.import_module(f"benchmarks.{module}")
    out = tmp_path / module
    scenario.main(["--smoke", "--out", str(out)])
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# ") and "- command: `" in text and "- machine: " in text and "- date: " in text
    result = json.loads(out.with_suffix(".json").read_text())
    assert (result.get("data") or {"spec": result["args"]["data"]})["spec"] == "digits"
