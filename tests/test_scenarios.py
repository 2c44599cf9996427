"""Each paper-reproduction scenario under benchmarks/ runs end to end in its --smoke mode (digits)."""

import json
import re
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("module", ["spine_fmnist", "omitted_class", "soft_regularizer", "ddp_checkpoint", "gpu_fmnist",
                                    "defaults_study", "imagefolder_decode", "photos_fmnist",
                                    "pipeline_digits", "teacher_inference", "findings_fmnist"])
def test_scenario_smoke(tmp_path, module, capsys):
    import importlib

    scenario = importlib.import_module(f"benchmarks.{module}")
    out = tmp_path / module
    scenario.main(["--smoke", "--out", str(out)])
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# ") and "- command: `" in text and "- machine: " in text and "- date: " in text
    result = json.loads(out.with_suffix(".json").read_text())
    assert (result.get("data") or {"spec": result["args"]["data"]})["spec"] == "digits"


@pytest.mark.slow
def test_the_same_seed_and_environment_train_bit_identical_weights_in_fresh_processes(tmp_path):
    from benchmarks import determinism

    out = tmp_path / "determinism"
    determinism.main(["--smoke", "--out", str(out)])
    reference, again = json.loads(out.with_suffix(".json").read_text())["runs"][:2]
    assert reference["env"] == again["env"] and again["identical"] and again["max_abs_difference"] == 0
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# ") and "- machine: " in text and "thread" in text.splitlines()[3]
    assert "Same seed, same thread count, same kernels: bit-identical weights." in text


@pytest.mark.slow
def test_epoch_time_against_a_revision_smoke(tmp_path):
    """Times this tree against HEAD in a temporary git worktree (removed afterwards)."""
    from benchmarks import epoch_time_vs_rev

    out = tmp_path / "rev"
    epoch_time_vs_rev.main(["--smoke", "--against", "HEAD", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["this_over_earlier"]) == {"hard", "distill"} and all(v > 0 for v in result["this_over_earlier"].values())


@pytest.mark.slow
def test_larger_than_memory_smoke(tmp_path):
    """The capped run trains (where a memory cgroup can be made: root on Linux with cgroup v1)."""
    from benchmarks import larger_than_memory

    why = larger_than_memory.cgroup_available()
    if why:
        pytest.skip(why)
    out = tmp_path / "ltm"
    larger_than_memory.main(["--smoke", "--distill", "mlp:hidden=16", "--then", "bench,export,evaluate", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    run, distilled, *then = result["runs"]
    assert [r["command"][1] for r in then] == ["evaluate", "export", "bench"]   # bench times the export made before it
    assert all(r["returncode"] == 0 for r in then) and then[1]["command"][-2] in then[2]["command"]
    assert run["returncode"] == 0 and 0 < run["peak_anon_bytes"] <= result["cap_bytes"] and run["test_accuracy"] > 0.5
    assert run["decode"] == "cold (empty cache)"   # counted in the cache, not assumed from the order
    assert distilled["returncode"] == 0 and distilled["command"][1] == "distill" and distilled["test_accuracy"] > 0.3
    assert "| `distill` |" in out.with_suffix(".md").read_text()


def test_a_teacher_trained_otherwise_is_refused_not_reused(tmp_path):
    """A benchmark's work folder may hold a teacher from another run; a figure must not be credited to it."""
    from benchmarks.scenario_common import prepare
    from benchmarks.spine_fmnist import parse_args

    args = parse_args(["--smoke", "--out", str(tmp_path / "spine")])
    prepare(args)                                          # trains the smoke teacher
    prepare(args)                                          # the same settings: reused
    args.teacher_epochs += 1
    with pytest.raises(SystemExit, match=r"trained with epochs 2 \(asked 3\); pass another --work folder"):
        prepare(args)
    args.teacher_epochs -= 1
    args.teacher_flip = True                               # a teacher that never saw a mirrored image
    with pytest.raises(SystemExit, match=r"trained with flip False \(asked True\)"):
        prepare(args)


def test_spine_report_is_written_again_from_its_json(tmp_path):
    """--render: the report from the stored result, with the timings read from the students' manifests."""
    from benchmarks import spine_fmnist

    out = tmp_path / "spine"
    spine_fmnist.main(["--smoke", "--out", str(out)])
    first = out.with_suffix(".md").read_text()
    result = json.loads(out.with_suffix(".json").read_text())
    for run in result["students"][0]["runs"]:
        del run["timings"]
    out.with_suffix(".json").write_text(json.dumps(result))
    out.with_suffix(".md").unlink()
    spine_fmnist.main(["--render", str(out.with_suffix(".json"))])
    assert out.with_suffix(".md").read_text() == first
    assert "Hard-label recipe for" in first and "95% interval" in first and "teacher's targets" in first
    assert "later seeds read them from the cache" in first


def test_spine_trains_the_one_soft_term_asked(tmp_path):
    """--method M: every student distils with M alone (no method search), and the report says so; one
    temperature and one alpha are taken as they are (no auto search)."""
    from benchmarks import spine_fmnist

    out = tmp_path / "spine"
    spine_fmnist.main(["--smoke", "--seeds", "1", "--method", "kd", "--temperature-grid", "2", "--alpha-grid", "0.5", "--out", str(out)])
    run = json.loads(out.with_suffix(".json").read_text())["students"][0]["runs"][0]
    assert run["config"]["method"] == "kd" and run["config"]["search_methods"] == []
    assert (run["config"]["temperature"], run["config"]["alpha"]) == (2.0, 0.5) and run["search"] == []
    assert json.loads((Path(run["path"]) / "manifest.json").read_text())["config"]["method"] == "kd"
    report = out.with_suffix(".md").read_text()
    assert "soft term `kd` alone" in report
    assert "teacher's targets" in report and "later seeds" not in report   # one seed: nothing read back to report
    assert "± 0.00" not in report and "One seed, so no spread" in report   # a spread of one seed is not zero


def test_spine_reuses_earlier_seeds_and_keeps_the_baseline_recipe_of_seed_0(tmp_path):
    """--reuse: seeds an earlier run measured are taken as they are; later seeds train the hard-label
    baseline with the recipe seed 0 chose on val, as they keep its (T, alpha)."""
    from benchmarks import spine_fmnist

    first, second, work = tmp_path / "one", tmp_path / "two", tmp_path / "work"
    spine_fmnist.main(["--smoke", "--seeds", "1", "--work", str(work), "--out", str(first)])
    earlier = json.loads(first.with_suffix(".json").read_text())["students"][0]["runs"][0]
    spine_fmnist.main(["--smoke", "--seeds", "2", "--work", str(work), "--reuse", str(first.with_suffix(".json")), "--out", str(second)])
    result = json.loads(second.with_suffix(".json").read_text())
    seed0, seed1 = result["students"][0]["runs"]
    assert seed0["reused"] and seed0["student_test_accuracy"] == earlier["student_test_accuracy"] and not seed1.get("reused")
    assert len(seed0["baseline_search"]) == 2
    assert [b["jitter"] for b in seed1["baseline_search"]] == [spine_fmnist.chosen_baseline(seed0)["jitter"]]
    report = second.with_suffix(".md").read_text()
    assert "Seed 0 is taken from an earlier run" in report and "and kept for the other seeds" in report
    assert "another machine" not in report                  # the same machine made both
    other = json.loads(json.dumps(result))
    other["reused_from"]["machine"]["simd"] = ["avx2", "fma"]
    other["provenance"]["machine"]["simd"] = ["avx2", "fma", "avx512f"]
    assert ("They ran on another machine (vector extensions avx2, fma; this run vector extensions avx2, fma, "
            "avx512f), where the same seed trains other weights") in spine_fmnist.render(other)
    vendor = json.loads(json.dumps(result))   # same extensions, another CPU: an AMD and an Intel train other weights too
    vendor["reused_from"]["machine"]["cpu"], vendor["provenance"]["machine"]["cpu"] = "AMD EPYC", "Intel(R) Xeon(R) Processor"
    assert "another machine (CPU AMD EPYC; this run CPU Intel(R) Xeon(R) Processor)" in spine_fmnist.render(vendor)
    assert "How good a judge val is" not in report   # the student kept its one recipe: no tries to judge
    judged = json.loads(json.dumps(result))   # a student that searched: val keeps the try worse on test, val NLL the other
    tries = judged["students"][0]["runs"][0]
    assert all("test_accuracy" in b for b in tries["baseline_search"])   # recorded by distill for each try
    tries["student_search"] = [{"jitter": 2, "views": 0, "view_grid": True, "val_accuracy": 0.9, "val_nll": 0.3,
                                "test_accuracy": 0.80, "chosen": True},
                               {"jitter": 0, "views": 0, "view_grid": False, "val_accuracy": 0.8, "val_nll": 0.2,
                                "test_accuracy": 0.85, "chosen": False}]
    judge = spine_fmnist.render(judged)
    assert "How good a judge val is" in judge and "| `mlp:hidden=32` | val NLL alone | 1 |" in judge
    with pytest.raises(SystemExit, match="--reuse needs a result made with the same arguments; .* has student_jitter=None, this run 1"):
        spine_fmnist.main(["--smoke", "--seeds", "2", "--work", str(work), "--student-jitter", "1", "--reuse", str(first.with_suffix(".json")),
                           "--out", str(tmp_path / "three")])


def test_spine_refuses_to_reuse_a_seed_distilled_with_other_settings(tmp_path):
    """The same arguments are not the same settings once edgekd's defaults change: a seed recorded with
    another config (or none, as results made before the check) is refused, not mixed in."""
    from benchmarks import spine_fmnist

    first, work = tmp_path / "one", tmp_path / "work"
    spine_fmnist.main(["--smoke", "--seeds", "1", "--work", str(work), "--out", str(first)])
    result = json.loads(first.with_suffix(".json").read_text())
    run = result["students"][0]["runs"][0]
    assert run["config"]["student"] == "mlp:hidden=32" and run["config"]["train"]["seed"] == 0   # what made the seed
    cases = [("other", lambda r: r["config"].update(search_methods=["dkd"]), "was distilled with other settings"),
             ("none", lambda r: r.pop("config"), "recorded no settings")]
    for name, edit, reason in cases:
        changed = json.loads(json.dumps(result))
        edit(changed["students"][0]["runs"][0])
        earlier = tmp_path / f"{name}.json"
        earlier.write_text(json.dumps(changed))
        with pytest.raises(SystemExit, match=f"--reuse needs seeds distilled with this run's settings; seed 0 of "
                                             f"`mlp:hidden=32` in {re.escape(str(earlier))} {reason}"):
            spine_fmnist.main(["--smoke", "--seeds", "2", "--work", str(work), "--reuse", str(earlier), "--out", str(tmp_path / name)])


def test_teacher_inference_compares_the_two_paths(tmp_path):
    from benchmarks.teacher_inference import main

    out = tmp_path / "ti"
    assert main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["teacher_logits_is_nhwc"] and result["top1_agreement"] == 1.0 and result["max_abs_diff"] < 1e-4
    assert "Teacher targets on the CPU" in out.with_suffix(".md").read_text()


def test_spine_gap_is_said_in_whole_clauses():
    """Each case of the share of the gap reads as a sentence: a loss is a loss, and a student above its
    teacher says so instead of printing a share above 100%."""
    from benchmarks.spine_fmnist import gap_words
    from edgekd.distill import gap_closed

    def words(dist, base, teacher):
        return gap_words(gap_closed(dist, base, teacher), base, dist, teacher)

    assert words(0.93, 0.92, 0.94) == "closes 50% of the gap"
    assert words(0.918, 0.92, 0.94) == "loses by 0.20 points"
    assert words(0.93, 0.92, 0.925) == "closes all of the gap and ends 0.50 points above the teacher"
    assert words(0.93, 0.92, 0.91) == "no share: the teacher is not above that baseline"


def test_spine_aim_is_not_judged_on_one_seed():
    from benchmarks.spine_fmnist import aim_line

    def student(*accs):
        return {"student": "cnn:width=8", "epochs": 30,
                "runs": [{"student_test_accuracy": a, "baseline_test_accuracy": 0.92} for a in accs]}

    one = aim_line(student(0.9345), 0.9309)
    assert "one seed, so no interval and no verdict" in one and "met" not in one and "nan" not in one
    met = aim_line(student(0.9345, 0.9330), 0.9309)
    assert "**met**" in met and "hard labels 92.00%, so distillation adds +1.38 points (beyond the seed spread)" in met
    assert "**missed**" in aim_line(student(0.9245, 0.9230), 0.9309)


@pytest.mark.slow
def test_defaults_study_takes_its_members_from_a_given_teacher(tmp_path, tiny_teacher):
    """--teacher: the members come from an artifact (the README's teacher), described from its manifest;
    more members than it has are refused in one line."""
    from benchmarks import defaults_study

    out = tmp_path / "given"
    defaults_study.main(["--smoke", "--teacher", str(tiny_teacher), "--members", "2", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["teacher"].startswith("2 × `cnn:width=8,fc=32` (4 epochs, no jitter") and str(tiny_teacher) in result["teacher"]
    assert {c["members"] for c in result["cells"]} == {2} and not (tmp_path / "given-work" / "teacher").exists()
    assert "Teachers: the first k of 2 × `cnn:width=8,fc=32`" in out.with_suffix(".md").read_text()
    # both sides chose their recipe on val (digits are images): the table says which, also when read back
    cell = result["cells"][0]
    assert cell["baseline_jitter"] in (0, 2) and all(r["jitter"] in (0, 2) for r in cell["runs"].values())
    assert "its recipe chosen on val between no jitter" in out.with_suffix(".md").read_text()
    assert "run time" in out.with_suffix(".md").read_text() and "read back from --work" not in out.with_suffix(".md").read_text()
    defaults_study.main(["--smoke", "--teacher", str(tiny_teacher), "--members", "2", "--reuse-only", "--out", str(out)])
    # a re-render's run time is its own, not its runs' training: it says how many it read back
    n = result["runs_trained"]
    assert n > 0 and f"(this invocation; {n} of {n} runs read back from --work)" in out.with_suffix(".md").read_text()
    again = json.loads(out.with_suffix(".json").read_text())["cells"][0]
    assert (again["baseline_jitter"], again["runs"]) == (cell["baseline_jitter"], {k: {**v, "seconds": again["runs"][k]["seconds"]}
                                                                                  for k, v in cell["runs"].items()})
    with pytest.raises(SystemExit, match="has 2. Pass --members up to 2"):
        defaults_study.main(["--smoke", "--teacher", str(tiny_teacher), "--members", "3", "--out", str(tmp_path / "more")])


@pytest.mark.slow
def test_defaults_study_spreads_seeds_over_runs_that_share_a_work_folder(tmp_path, tiny_teacher):
    """--first-seed: seeds 0 and 1 run apart (as parallel processes on a GPU would), then --reuse-only over
    both reads every run back and reports seeds 0..1; a negative seed is refused (argparse's error, exit 2)."""
    from benchmarks import defaults_study

    common = ["--smoke", "--teacher", str(tiny_teacher), "--members", "2", "--work", str(tmp_path / "work")]
    defaults_study.main([*common, "--first-seed", "1", "--out", str(tmp_path / "one")])
    part = json.loads((tmp_path / "one.json").read_text())
    assert [c["seed"] for c in part["cells"]] == [1] and "seeds 1..1;" in (tmp_path / "one.md").read_text()
    defaults_study.main([*common, "--out", str(tmp_path / "zero")])
    defaults_study.main([*common, "--seeds", "2", "--reuse-only", "--out", str(tmp_path / "all")])
    result = json.loads((tmp_path / "all.json").read_text())
    assert [c["seed"] for c in result["cells"]] == [0, 1] and result["runs_trained"] == 0 and not result["not_run"]
    assert result["cells"][1]["runs"].keys() == part["cells"][0]["runs"].keys()
    assert all(result["cells"][1]["runs"][n]["test_accuracy"] == r["test_accuracy"] for n, r in part["cells"][0]["runs"].items())
    assert "seeds 0..1;" in (tmp_path / "all.md").read_text()
    with pytest.raises(SystemExit) as refused:
        defaults_study.main([*common, "--first-seed", "-1", "--out", str(tmp_path / "bad")])
    assert refused.value.code == 2 and not (tmp_path / "bad.json").exists()


@pytest.mark.slow
def test_defaults_study_reuses_an_earlier_results_cells_only_with_its_teacher(tmp_path, tiny_teacher):
    """--reuse: an earlier result's cells stand for the ones not in --work (seed 0 of a study whose later seeds
    run now), when the arguments and the teacher are the same; anything else is refused in one line."""
    from benchmarks import defaults_study

    common = ["--smoke", "--teacher", str(tiny_teacher), "--members", "2"]
    first = tmp_path / "first"
    defaults_study.main([*common, "--out", str(first)])
    earlier = json.loads(first.with_suffix(".json").read_text())
    assert set(earlier["teacher_fingerprints"]) == {"2"}
    second = tmp_path / "second"
    defaults_study.main([*common, "--seeds", "2", "--reuse", str(first.with_suffix(".json")), "--out", str(second)])
    result = json.loads(second.with_suffix(".json").read_text())
    assert [(c["seed"], c.get("reused", False)) for c in result["cells"]] == [(0, True), (1, False)]
    assert {k: v for k, v in result["cells"][0].items() if k != "reused"} == earlier["cells"][0]
    assert result["runs_trained"] == len(earlier["candidates"])   # seed 1 only
    text = second.with_suffix(".md").read_text()
    assert "Taken from an earlier run with the same arguments" in text and "the same teacher fingerprint): k=2 `mlp:hidden=16` seed 0." in text

    def reuse_only(change):
        edited = json.loads(json.dumps(earlier))
        change(edited)
        path = tmp_path / "edited.json"
        path.write_text(json.dumps(edited))
        defaults_study.main([*common, "--seeds", "2", "--reuse", str(path), "--reuse-only", "--out", str(tmp_path / "third")])
        return (tmp_path / "third.md").read_text()

    # made before fingerprints were recorded: the same CPU kind and teacher accuracy to the image stand for one
    assert "the same test accuracy to the image" in reuse_only(lambda r: r.pop("teacher_fingerprints"))
    with pytest.raises(SystemExit, match="classifies .* test images right, this run's"):
        reuse_only(lambda r: (r.pop("teacher_fingerprints"), r["cells"][0].update(teacher=r["cells"][0]["teacher"] - 0.01)))
    with pytest.raises(SystemExit, match="recorded no teacher fingerprint and ran on another machine \\(CPU Another CPU; this run CPU"):
        reuse_only(lambda r: (r.pop("teacher_fingerprints"), r["provenance"]["machine"].update(cpu="Another CPU")))
    with pytest.raises(SystemExit, match="has teacher k=2 000000000000, this run"):
        reuse_only(lambda r: r["teacher_fingerprints"].update({"2": "0" * 64}))
    with pytest.raises(SystemExit, match="same arguments; .* has epochs=3, this run 2"):
        reuse_only(lambda r: r["args"].update(epochs=3))
    # the same arguments, other settings (edgekd's defaults changed since), or none recorded: refused
    name = earlier["candidates"][0]["name"]
    with pytest.raises(SystemExit, match=f"seed 0 \\({re.escape(name)}\\) in .* was distilled with other settings"):
        reuse_only(lambda r: r["cells"][0]["runs"][name]["config"].update(recipe_search=False))
    with pytest.raises(SystemExit, match="recorded no settings"):
        reuse_only(lambda r: r["cells"][0]["runs"][name].pop("config"))
    with pytest.raises(SystemExit, match="--reuse expects a result .json of this benchmark; .* could not be read as one"):
        defaults_study.main([*common, "--reuse", str(first.with_suffix(".md")), "--reuse-only", "--out", str(tmp_path / "fourth")])


def test_defaults_study_candidates_can_correct_the_teacher():
    from benchmarks.defaults_study import _config, parse_candidate

    plain, corrected = parse_candidate("kd-ls:T=2,a=0.5"), parse_candidate("kd-ls:T=2,a=0.5,c=1")
    assert (plain["correct"], corrected["correct"]) == (False, True)
    args = type("Args", (), {"epochs": 3, "device": "cpu"})()
    assert _config(args, corrected, "mlp", 0, 1).correct_teacher and not _config(args, plain, "mlp", 0, 0).correct_teacher
    mixed = parse_candidate("kd-ls:T=2,a=0.5,m=1")
    assert (_config(args, mixed, "mlp", 0, 0).train.mixup, _config(args, plain, "mlp", 0, 0).train.mixup) == (1.0, 0.0)
    # one soft term per candidate, unless it asks for edgekd's method search
    searched = parse_candidate("kd-ls:T=2,a=0.5,s=kd+dkd")
    assert _config(args, plain, "mlp", 0, 0).search_methods == () and _config(args, searched, "mlp", 0, 0).search_methods == ("kd", "dkd")
    # the student's recipe search (jitter on consistent views) unless the candidate turns it off
    fixed = parse_candidate("kd:T=2,a=0.5,r=0")
    assert _config(args, plain, "mlp", 0, 0).recipe_search and not _config(args, fixed, "mlp", 0, 0).recipe_search


def test_a_run_recorded_before_a_setting_existed_is_the_same_when_it_holds_the_default():
    """``same_settings``: a field added since a run (train.mixup) does not make that run stale while the
    new config holds the field's default; a real difference, or a field the config no longer has, does."""
    from dataclasses import asdict

    from benchmarks.scenario_common import same_settings
    from edgekd.config import DistillConfig, TrainConfig

    config = DistillConfig(student="mlp", train=TrainConfig(epochs=3))
    record = asdict(config)
    assert same_settings(record, config)
    older = {**record, "train": {k: v for k, v in record["train"].items() if k != "mixup"}}
    assert same_settings(older, config)
    assert not same_settings(older, DistillConfig(student="mlp", train=TrainConfig(epochs=3, mixup=0.2)))
    assert not same_settings({**record, "alpha": 0.9}, config)
    assert not same_settings({**record, "gone": 1}, config) and not same_settings(None, config)
    # a field whose default changed what runs do (the student's method search): its absence means the old way
    before_search = {k: v for k, v in record.items() if k != "search_methods"}
    assert not same_settings(before_search, config)
    assert same_settings(before_search, DistillConfig(student="mlp", train=TrainConfig(epochs=3), search_methods=()))


def test_defaults_study_runs_are_named_by_candidate_not_by_place(tmp_path):
    """A study with another --candidates list must not overwrite (or reuse) another candidate's runs."""
    from benchmarks.defaults_study import _run_dir, parse_candidate

    args = type("Args", (), {"work": str(tmp_path)})()
    a, b = parse_candidate("kd-ls:T=2,a=0.5,c=1"), parse_candidate("kd-ls:T=1,a=0.5")
    assert _run_dir(args, 1, "cnn:width=8", 0, a, 1) != _run_dir(args, 1, "cnn:width=8", 0, b, 1)
    assert _run_dir(args, 1, "cnn:width=8", 0, a, 0) != _run_dir(args, 1, "cnn:width=8", 0, a, 1)   # the baseline run


@pytest.mark.parametrize("bad", ["kd-ls:T=2", "kd-ls:T=2,a=0.5,c=2", "crd:T=2,a=0.5", "kd:T=two,a=0.5", "kd:T=2,a=0.5,b=1", "kd-ls:T=2,a=0.5,s=crd", "kd:T=2,a=0.5,r=2"])
def test_defaults_study_refuses_a_malformed_candidate_in_one_line(bad, capsys):
    from benchmarks import defaults_study

    with pytest.raises(SystemExit) as exit_info:
        defaults_study.parse_args(["--candidates", f"kd:T=4,a=0.9;{bad}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--candidates: expected METHOD:T=<float>,a=<float>[,c=0|1]" in err and repr(bad) in err


def test_pipeline_digits_breaks_a_tie_on_val_with_the_current_setting():
    """143 val images tie easily: the pipeline's own setting stays unless another is better on val."""
    import time

    from benchmarks.pipeline_digits import render, summarize
    from benchmarks.provenance import provenance
    from edgekd.config import PipelineConfig

    def cells(epochs, val, test, baseline_test):
        return [{"epochs": epochs, "student_jitter": 0, "val": val, "test": test, "baseline_test": baseline_test}]

    current = PipelineConfig.epochs
    rows = summarize(cells(current // 2, 0.99, 0.97, 0.97) + cells(current, 0.99, 0.98, 0.97))
    assert [r["chosen"] for r in rows] == [False, True]
    rows = summarize(cells(current // 2, 0.995, 0.97, 0.97) + cells(current, 0.99, 0.98, 0.97))
    assert [r["chosen"] for r in rows] == [True, False]
    result = {"teacher": {"config": {"ensemble": 3, "arch": "cnn", "train": {"epochs": 15, "jitter": 1}},
                          "test_accuracy": 0.99}, "student": "mlp", "alpha": 0.5, "settings": rows}
    assert "distillation ties its baseline on test" in render(result, provenance(time.perf_counter()))


def test_defaults_study_assembles_the_method_search_from_two_candidates_runs():
    """--pick: per cell, the better on val of A's chosen recipe and B's no-jitter one (accuracy, then NLL), with
    that run's test accuracy; a cell where B's no-jitter recipe wins but B kept jitter is not guessed."""
    from benchmarks.defaults_study import _pick_note, add_pick, parse_candidate

    a, b = parse_candidate("kd-ls:T=2,a=0.5"), parse_candidate("kd:T=2,a=0.5")

    def run(test, records):
        return {"test_accuracy": test, "jitter": next(j for j, _, _, chosen in records if chosen),
                "search": [{"jitter": j, "val_accuracy": v, "val_nll": n, "chosen": chosen} for j, v, n, chosen in records]}

    def cell(seed, run_a, run_b):
        return {"members": 3, "student": "dsconv", "seed": seed, "baseline": 0.88, "teacher": 0.89,
                "runs": {a["name"]: run_a, b["name"]: run_b}}

    cells = [cell(0, run(0.879, [(2, 0.887, 0.31, True), (0, 0.884, 0.33, False)]), run(0.886, [(2, 0.880, 0.3, False), (0, 0.889, 0.3, True)])),
             cell(1, run(0.885, [(2, 0.887, 0.31, True), (0, 0.884, 0.33, False)]), run(0.870, [(2, 0.880, 0.3, False), (0, 0.887, 0.32, True)]))]
    candidates = [a, b]
    assert add_pick(f"{a['name']}|{b['name']}", candidates, cells) == []
    name = f"{a['name']} or {b['name']} on val"
    assert [c["runs"][name]["test_accuracy"] for c in cells] == [0.886, 0.885]   # B wins on accuracy; a tie goes by NLL
    assert candidates[-1]["name"] == name and candidates[-1]["derived"]
    jittered = [cell(0, run(0.879, [(2, 0.887, 0.31, True), (0, 0.884, 0.33, False)]), run(0.886, [(2, 0.899, 0.3, True), (0, 0.889, 0.3, False)]))]
    unpicked = add_pick(f"{a['name']}|{b['name']}", [a, b], jittered)
    assert [(c["student"], c["seed"]) for c in unpicked] == [("dsconv", 0)] and "kept jitter" in unpicked[0]["why"]
    assert "`dsconv` seed 0: the second candidate's no-jitter recipe won on val where it kept jitter" in _pick_note(
        {"candidates": [a, b], "pick_not_assembled": unpicked})
    assert set(jittered[0]["runs"]) == {a["name"], b["name"]}   # nothing guessed
    unrecorded = [cell(1, run(0.879, [(2, 0.887, 0.31, True)]), {"test_accuracy": 0.88, "jitter": 0, "search": []})]
    assert "no val figures" in add_pick(f"{a['name']}|{b['name']}", [a, b], unrecorded)[0]["why"]


def test_defaults_study_refuses_a_pick_the_method_search_cannot_make(capsys):
    """--pick stands for distill's method search, which trains B on the plain transfer set with A's T and alpha:
    a mixup candidate or another T/alpha is refused in one line, exit 2."""
    from benchmarks.defaults_study import parse_args

    for cands, pick in (("kd-ls:T=2,a=0.5;kd:T=2,a=0.5,m=1", "kd-ls:T=2,a=0.5|kd:T=2,a=0.5,m=1"),
                        ("kd-ls:T=2,a=0.5;kd:T=4,a=0.5", "kd-ls:T=2,a=0.5|kd:T=4,a=0.5")):
        with pytest.raises(SystemExit) as e:
            parse_args(["--candidates", cands, "--pick", pick])
        assert e.value.code == 2
        assert "--pick needs two candidates without m= and with the same T and a" in capsys.readouterr().err
    assert parse_args(["--candidates", "kd-ls:T=2,a=0.5;kd:T=2,a=0.5", "--pick", "kd-ls:T=2,a=0.5|kd:T=2,a=0.5"]).pick


def test_defaults_study_rebuilds_the_one_record_of_a_run_without_search():
    """A run that tried one recipe (r=0) records no search; --pick still needs its val figures, which its
    manifest holds (not for runs from before val_nll was recorded: those are not guessed)."""
    from benchmarks.defaults_study import add_pick, parse_candidate, student_records

    a, b = parse_candidate("kd-ls:T=2,a=0.5,r=0"), parse_candidate("kd:T=2,a=0.5,r=0")
    searched = [{"jitter": 2, "val_accuracy": 0.9, "val_nll": 0.3, "chosen": True}]
    assert student_records({"student_search": searched}, a) == searched
    assert student_records({"student_search": [], "val_accuracy": 0.9}, a) == []
    one = student_records({"student_search": [], "val_accuracy": 0.9, "val_nll": 0.3, "test_accuracy": 0.83}, b)
    assert one == [{"method": "kd", "jitter": 0, "mixup": 0.0, "val_accuracy": 0.9, "val_nll": 0.3, "test_accuracy": 0.83,
                    "chosen": True}]
    cell = {"members": 1, "student": "mlp", "seed": 0, "baseline": 0.8, "teacher": 0.9,
            "runs": {a["name"]: {"test_accuracy": 0.81, "search": student_records(
                {"val_accuracy": 0.88, "val_nll": 0.4, "test_accuracy": 0.81}, a)},
                     b["name"]: {"test_accuracy": 0.83, "search": one}}}
    assert add_pick(f"{a['name']}|{b['name']}", [a, b], [cell]) == []
    assert cell["runs"][f"{a['name']} or {b['name']} on val"]["test_accuracy"] == 0.83


def test_defaults_study_measures_how_good_a_judge_val_is_from_each_trys_test_figure():
    """Each side keeps a try by a rule; with every try's test accuracy recorded, the gain under each rule and
    how often the pick was also the best on test come from the runs already made. A cell from before the
    test figure was recorded is left out, not guessed."""
    from benchmarks.defaults_study import _judge_lines, parse_candidate
    from benchmarks.scenario_common import judged

    cand = parse_candidate("kd-ls:T=2,a=0.5,s=kd")

    def tries(*rows):
        return [{"val_accuracy": v, "val_nll": n, "test_accuracy": t, "chosen": False} for v, n, t in rows]

    # val accuracy keeps the first student try (test 0.90); val NLL the second (0.91); the oracle the second
    student = tries((0.92, 0.30, 0.90), (0.91, 0.20, 0.91))
    baseline = tries((0.90, 0.25, 0.89), (0.89, 0.35, 0.895))   # val keeps 0.89, NLL too; the oracle 0.895
    cell = {"members": 1, "student": "dsconv", "seed": 0, "baseline": 0.89, "baseline_search": baseline,
            "runs": {cand["name"]: {"test_accuracy": 0.90, "search": student}}}
    old = {**cell, "seed": 1, "baseline_search": [{k: v for k, v in r.items() if k != "test_accuracy"} for r in baseline]}
    pairs = [(c["runs"][cand["name"]]["search"], c["baseline_search"]) for c in (cell, old)]
    rows = {r["rule"]: r for r in judged(pairs)}
    edgekd, nll, oracle = (rows[k] for k in ("val accuracy, then NLL (edgekd's rule)", "val NLL alone",
                                             "test accuracy (an oracle, not a rule)"))
    assert edgekd["cells"] == 1 and edgekd["mean_gain"] == pytest.approx(1.0)
    assert (edgekd["student_best_on_test"], edgekd["baseline_best_on_test"]) == (0, 0)
    assert nll["mean_gain"] == pytest.approx(2.0) and nll["student_best_on_test"] == 1
    assert oracle["mean_gain"] == pytest.approx(1.5) and (oracle["student_best_on_test"], oracle["baseline_best_on_test"]) == (1, 1)
    assert "| k=1 `dsconv`, `kd-ls:T=2,a=0.5,s=kd` | val NLL alone | 1 | +2.00 | 1/1 | 0/1 |" in _judge_lines([cell], [cand])
    assert judged(pairs[1:]) == [] and _judge_lines([old], [cand]) == []


def test_defaults_study_gives_the_mean_gains_95_percent_interval_over_seeds():
    """The bar is judged on the mean of the seeds; beside it, the Student-t interval says how far that mean
    can be trusted: gains of 1, 2 and 3 points have mean 2, std 1 and t(0.975, 2) = 4.303, so 2 ± 2.48."""
    from benchmarks.defaults_study import by_pair, parse_candidate

    cand = parse_candidate("kd:T=2,a=0.5")
    cells = [{"members": 1, "student": "mlp", "seed": seed, "baseline": 0.8,
              "runs": {cand["name"]: {"test_accuracy": 0.8 + gain / 100}}} for seed, gain in enumerate((1, 2, 3))]
    (row,) = by_pair(cells, [cand])
    assert row["mean_gain"] == pytest.approx(2.0) and row["std_gain"] == pytest.approx(1.0)
    assert row["interval95"] == pytest.approx([2 - 2.4841, 2 + 2.4841], abs=1e-3)
    (one,) = by_pair(cells[:1], [cand])
    assert one["interval95"] is None and one["std_gain"] is None


def test_spine_names_the_distilled_students_own_recipe_search():
    """A student that also tried jitter on consistent views says what each seed tried, kept and cost."""
    from benchmarks.spine_fmnist import student_recipe_line

    def run(seed, kept_jitter):
        return {"seed": seed, "student_search_seconds": 60.0, "student_search": [
            {"jitter": 2, "views": 0, "view_grid": True, "val_accuracy": 0.8937, "chosen": kept_jitter == 2},
            {"jitter": 0, "views": 4, "view_grid": False, "val_accuracy": 0.9098, "chosen": kept_jitter == 0}]}

    s = {"student": "mlp", "epochs": 20, "runs": [run(0, 0), run(1, 2)]}
    line = student_recipe_line(s, [s])
    assert "seed 0: ±2 px, all 25 shifts 89.37 / ±0 px 90.98 (kept)" in line
    assert "no jitter in 1 of 2 seeds" in line and "cost 2.0 min" in line
    assert student_recipe_line({"student": "mlp", "epochs": 20, "runs": [{"seed": 0, "student_search": []}]}, []) is None


def test_spine_says_when_the_hard_label_recipe_was_not_searched():
    """A result made before the baseline's own recipe search tried one recipe in each seed: it was not
    chosen on val, nor chosen with seed 0 and kept."""
    from benchmarks.spine_fmnist import recipe_line

    def run(seed, searched):
        plain = {"jitter": 0, "val_accuracy": 0.90, "chosen": True}
        return {"seed": seed, "baseline_search": [{"jitter": 2, "val_accuracy": 0.89, "chosen": False}, plain][not searched:]}

    old = {"student": "mlp", "epochs": 20, "runs": [run(0, False), run(1, False)]}
    assert recipe_line(old, [old]) == "Hard-label recipe for `mlp`: ±0 px in every seed, the only one tried (no search)."
    kept = {"student": "mlp", "epochs": 20, "runs": [run(0, True), run(1, False)]}
    assert "chosen on val with seed 0 (±2 px 89.00 / ±0 px 90.00 (kept)) and kept for the other seeds" in recipe_line(kept, [kept])


def test_spine_students_of_another_budget_keep_their_own_folders(tmp_path):
    """A run of the same student at another budget in the same work folder must not replace the first run's
    students: the folder is named by its epochs whenever they are not --epochs."""
    from benchmarks import spine_fmnist

    common = ["--smoke", "--seeds", "1", "--method", "kd", "--temperature-grid", "2", "--alpha-grid", "0.5",
              "--work", str(tmp_path / "work")]
    paths = []
    for budget in ("1", "2"):
        out = tmp_path / f"spine-e{budget}"
        spine_fmnist.main([*common, "--students", f"mlp:hidden=16@{budget}", "--out", str(out)])
        paths.append(json.loads(out.with_suffix(".json").read_text())["students"][0]["runs"][0]["path"])
    assert paths[0] != paths[1] and all(Path(p, "manifest.json").exists() for p in paths)


def test_spine_function_matching_runs_the_teacher_online_and_lets_the_baseline_mix_too(tmp_path):
    """--student-mixup A: students blend each batch with the teacher online (no cached views), their folders
    are named by it, the hard-label baseline also tries the blend (seed 0; later seeds keep its recipe, as
    with jitter alone), and the epoch time says the teacher ran."""
    from benchmarks import spine_fmnist

    out = tmp_path / "spine"
    spine_fmnist.main(["--smoke", "--seeds", "2", "--student-mixup", "1", "--method", "kd", "--temperature-grid", "2",
                       "--alpha-grid", "0.5", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    run = result["students"][0]["runs"][0]
    assert run["config"]["train"]["mixup"] == 1.0 and run["config"]["views"] == 0 and not run["config"]["view_grid"]
    assert Path(run["path"]).name.endswith("-m1-s0")
    assert {b["mixup"] for b in run["baseline_search"]} == {0.0, 1.0}
    seed1 = result["students"][0]["runs"][1]   # the recipe seed 0 kept, mixup and all, is the later seeds' only one
    kept = next(b for b in run["baseline_search"] if b["chosen"])
    assert [(b["jitter"], b["mixup"]) for b in seed1["baseline_search"]] == [(kept["jitter"], kept["mixup"])]
    assert seed1["config"]["baseline_mixup"] == (kept["mixup"] or None)
    assert result["epoch_time"]["teacher_online"] is True
    report = out.with_suffix(".md").read_text()
    assert "function matching" in report and "mixup 1" in report and "teacher online on every blended batch" in report
    assert "min of training (the teacher's forward passes included)" in report and "teacher's targets" not in report
    assert "Mean ± std over 2 seeds;" in report and "kept for the other seeds" in report
    with pytest.raises(SystemExit):
        spine_fmnist.parse_args(["--student-mixup", "1", "--views", "all"])


def test_spine_with_flip_mirrors_on_consistent_views_and_lets_the_baseline_mirror_too(tmp_path):
    """--student-flip: students mirror a random half, the teacher cached on mirrored views too (--smoke caches
    2 views); the baseline tries the student's mirroring first (seed 0; later seeds keep its whole recipe)."""
    from benchmarks import spine_fmnist

    out = tmp_path / "spine"
    spine_fmnist.main(["--smoke", "--seeds", "2", "--student-flip", "--method", "kd",
                       "--temperature-grid", "2", "--alpha-grid", "0.5", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    run, seed1 = result["students"][0]["runs"]
    assert run["config"]["train"]["flip"] is True and run["config"]["views"] == 2 and Path(run["path"]).name.endswith("-flip-s0")
    assert [b["flip"] for b in run["baseline_search"]] == [True, False, False]
    kept = next(b for b in run["baseline_search"] if b["chosen"])
    assert [(b["jitter"], b["flip"]) for b in seed1["baseline_search"]] == [(kept["jitter"], kept["flip"])]
    report = out.with_suffix(".md").read_text()
    assert "a random half mirrored left to right" in report and "(±1 px, flip " in report
    assert 0 <= result["teacher"]["mirrored_test_accuracy"] <= 1 and "on the test images mirrored left to right" in report
    assert "mirroring with the student's jitter" in report


def test_spine_reuses_a_result_older_than_its_newer_arguments(tmp_path):
    """A result committed before an argument existed (here --student-mixup) ran with that argument's
    old behaviour: it stays reusable by a run that leaves the argument at it, and is refused by one that does not."""
    from benchmarks import spine_fmnist

    args = spine_fmnist.parse_args(["--students", "mlp@60", "--views", "all"])
    earlier = {"args": {k: v for k, v in vars(args).items() if k != "student_mixup"},
               "students": [{"student": "mlp", "epochs": 60, "runs": [{"seed": 0}]}], "provenance": {"machine": {}}}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    runs, _ = spine_fmnist.reused_runs(str(path), args)
    assert list(runs) == [("mlp", 60, 0)]
    mixed = spine_fmnist.parse_args(["--students", "mlp@60", "--student-mixup", "1"])
    mixed.views = "all"   # the only other difference is the views, which mixup replaces; the refusal names mixup first
    with pytest.raises(SystemExit, match="has student_mixup=0.0, this run 1.0"):
        spine_fmnist.reused_runs(str(path), mixed)


def test_the_scenario_medians_of_an_even_count_are_the_mean_of_the_middle_two():
    from benchmarks.epoch_time_vs_rev import _median
    from benchmarks.gpu_fmnist import _median as gpu_median

    assert _median([4.0, 1.0, 3.0, 2.0]) == gpu_median([1.0, 2.0, 3.0, 4.0]) == 2.5 and _median([3.0, 1.0, 2.0]) == 2.0


def test_the_spine_extrapolation_counts_every_recipe_a_seed_trains():
    """Per seed the student tries 3 recipes and the baseline 2, each a whole fit: all of them count."""
    from benchmarks.gpu_fmnist import SPINE, extrapolate_spine, recipe_counts

    rows = [{"model": m, "kind": k, "seconds_per_epoch": 1.0, "val_seconds": 0.0}
            for m, k in (("teacher", "hard"), ("mlp", "hard"), ("mlp", "distill"), ("cnn:width=8", "hard"),
                         ("cnn:width=8", "distill"))]
    parts = extrapolate_spine({"rows": rows, "view_cache_seconds": 0.0})["parts"]
    assert recipe_counts("mlp") == (3, 2)
    assert parts["mlp"] == SPINE["seeds"] * 20 * (3 + 2) + SPINE["grid"] * 5


def test_the_committed_specialists_result_renders_again():
    """A result from before the sign test was recorded renders without it, not with a KeyError."""
    import json
    from pathlib import Path

    from benchmarks.specialists_fmnist import render

    result = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "specialists_fmnist.json").read_text())
    assert "test predictions" in render(result, "specialists.png")


def test_defaults_study_refuses_another_studys_teacher_left_in_its_work_folder(tmp_path, tiny_teacher):
    """A teacher in --work trained for another study (other data or epochs) is not this study's: refused, not
    distilled from (its runs would be reported under this study's settings)."""
    import shutil

    from benchmarks import defaults_study

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(tiny_teacher, work / "teacher")   # 4 epochs, on digits whole
    with pytest.raises(SystemExit, match="is cnn:width=8,fc=32 trained 4 epochs; this study asks for cnn:width=4,fc=16, 2"):
        defaults_study.main(["--smoke", "--work", str(work), "--out", str(tmp_path / "o")])
    manifest = json.loads((work / "teacher" / "manifest.json").read_text())
    manifest["data"]["train_limit"] = 300   # as a teacher trained on a subset records it
    (work / "teacher" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="was trained on other data \\(train_limit 300; this study: train_limit None\\)"):
        defaults_study.main(["--smoke", "--work", str(work), "--out", str(tmp_path / "o")])


def test_spine_reuses_a_seed_only_from_the_same_teacher(monkeypatch):
    """A seed of an earlier result is taken only when distilled from this run's teacher (its fingerprint, or
    for a seed from before fingerprints, its test accuracy): its gap is computed against this teacher."""
    from types import SimpleNamespace

    from benchmarks import spine_fmnist

    monkeypatch.setattr(spine_fmnist, "same_settings", lambda recorded, config: True)
    config, teacher = SimpleNamespace(student="mlp"), SimpleNamespace(fingerprint="abc")
    old = {"seed": 0, "config": {}, "teacher_test_accuracy": 0.9437000155448914}
    assert spine_fmnist.reused_run(old, config, "r.json", teacher, 0.9437000155448914)["reused"]
    with pytest.raises(SystemExit, match="distilled from another \\(test accuracy 0.1000, this teacher 0.9437\\)"):
        spine_fmnist.reused_run({**old, "teacher_test_accuracy": 0.1}, config, "r.json", teacher, 0.9437000155448914)
    with pytest.raises(SystemExit, match="distilled from another"):
        spine_fmnist.reused_run({**old, "teacher_fingerprint": "xyz"}, config, "r.json", teacher, 0.9437000155448914)


def test_provenance_records_the_revision_the_run_began_with(monkeypatch):
    """Others may commit during an hour-long run: the revision at the end is recorded apart, not as the code that ran."""
    from benchmarks import provenance

    monkeypatch.setattr(provenance, "REVISION_AT_START", "aaaaaaaaaaaa")
    monkeypatch.setattr(provenance, "code_revision", lambda: "bbbbbbbbbbbb")
    record = provenance.provenance(0.0)
    assert (record["revision"], record["revision_at_end"]) == ("aaaaaaaaaaaa", "bbbbbbbbbbbb")
    header = "\n".join(provenance.header_markdown("t", record))
    assert "edgekd revision aaaaaaaaaaaa (the tree was at bbbbbbbbbbbb when it ended)" in header


def test_the_scale_reading_calls_a_loss_to_the_longer_trained_generalist_a_loss():
    import json
    from pathlib import Path

    from benchmarks.specialists_scale import reading

    result = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "specialists_scale.json").read_text())
    assert "(63.07%) loses by 0.42 points to the 8-epoch generalist alone (63.49%)" in reading(result)


def test_defaults_study_summary_without_a_candidate_that_still_distills_recommends_none():
    from benchmarks.defaults_study import summarize

    cells = [{"baseline": 0.9, "runs": {"kd:T=2,a=0.3": {"test_accuracy": 0.91}}}]
    rows = summarize(cells, [{"name": "kd:T=2,a=0.3", "alpha": 0.3}])
    assert rows[0]["mean_gain"] == pytest.approx(1.0) and rows[0]["recommended"] is False


def test_reuse_takes_an_earlier_result_that_stored_an_option_as_a_number(tmp_path):
    """Older spine results stored --views 4 as the number 4; the same option is '4' now: the same run."""
    import json
    from types import SimpleNamespace

    from benchmarks.scenario_common import earlier_result

    (tmp_path / "r.json").write_text(json.dumps({"args": {"views": 4, "seeds": 3}, "provenance": {}}))
    earlier, _ = earlier_result(str(tmp_path / "r.json"), SimpleNamespace(views="4", seeds=5), {"seeds"})
    assert earlier["args"]["views"] == 4


def test_the_spine_aim_is_judged_against_the_strongest_hard_label_student():
    """60 epochs of hard labels can be worse than 20: the aim is judged against the stronger of the two."""
    from benchmarks.spine_fmnist import aim_line

    def student(epochs, base, dist):
        return {"student": "mlp", "epochs": epochs, "runs": [{"baseline_test_accuracy": b, "student_test_accuracy": d}
                                                             for b, d in zip(base, dist)]}

    short, long = student(20, [0.90, 0.90], [0.905, 0.905]), student(60, [0.86, 0.86], [0.92, 0.92])
    # against its own 86% the long run closes 6/7.4 = 81% of the gap to 93.4%; against the 90% one, 2/3.4 = 59%
    assert "of the gap against the strongest hard-label student here: **missed**" in aim_line(long, 0.934, [short, long])
    assert "**met**" in aim_line(long, 0.934, [long])


def test_a_benchmark_refuses_bad_input_with_one_line_and_exit_code_2(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "no-teacher"
    done = subprocess.run([sys.executable, "-m", "benchmarks.defaults_study", "--smoke", "--teacher", str(missing),
                           "--out", str(tmp_path / "study")], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"error: --teacher: '{missing}' is not an edgekd artifact; pass an ensemble's folder "
                                   "or leave it out to train one.")
    assert not (tmp_path / "study.md").exists()


def test_run_script_maps_edgekd_user_errors_to_exit_code_2_and_passes_other_codes(capsys):
    from benchmarks.scenario_common import run_script
    from edgekd.errors import ConfigError

    def bad():
        raise ConfigError("The 'epochs' parameter must be >= 1. Got 0 instead.")

    with pytest.raises(SystemExit) as refused:
        run_script(bad)
    assert refused.value.code == 2
    assert capsys.readouterr().err == "error: The 'epochs' parameter must be >= 1. Got 0 instead.\n"
    for returned, code in ((None, None), (0, 0), (3, 3)):
        with pytest.raises(SystemExit) as done:
            run_script(lambda: returned)
        assert done.value.code == code
