from edgekd.artifacts import load_artifact


def test_fixture_artifacts_load(tiny_teacher, tiny_student):
    teacher = load_artifact(tiny_teacher)
    assert teacher.kind == "ensemble" and len(teacher.manifest["members"]) == 2
    student = load_artifact(tiny_student)
    assert student.kind == "model"
    assert load_artifact(tiny_student / "baseline").kind == "model"
