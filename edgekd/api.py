"""The library in one import, for a notebook or a script: every stage, its config and result, and the loaders.

    from edgekd.api import DistillConfig, TeacherConfig, TrainConfig, distill, load_dataset, train_teachers

    data = load_dataset("digits")
    teacher = train_teachers(data, TeacherConfig(arch="cnn", ensemble=2, train=TrainConfig(epochs=5)), "runs/teacher")
    student = distill(teacher.path, data, DistillConfig(student="mlp:hidden=32", baseline=True), "runs/student")
    print(student.student_test_accuracy, student.baseline_test_accuracy)

Each stage is a plain function returning a frozen result; it raises ``edgekd.errors.EdgekdError`` (a
``ConfigError``, ``DataError``, ...) with one line saying what to change. Importing this module loads torch;
``edgekd`` itself does not, so that ``edgekd --help`` stays quick.
"""

from __future__ import annotations

from benchmarks.harness import BenchConfig, run_benchmark
from edgekd.config import DistillConfig, PipelineConfig, TeacherConfig, TrainConfig
from edgekd.data import Dataset, load_dataset
from edgekd.distill import DistillResult, distill
from edgekd.errors import ConfigError, DataError, EdgekdError
from edgekd.evaluate import EvalResult, evaluate
from edgekd.models import create_model, list_models, register_model
from edgekd.pipeline import run_pipeline
from edgekd.teacher_training import TeacherResult, train_teachers
from edgekd.teachers import Teacher, load_teacher
from export import ExportConfig, export_executorch, export_onnx, read_metadata
from specialists.build import build_specialists, regate_specialists
from specialists.config import SpecialistConfig

__all__ = ["BenchConfig", "ConfigError", "DataError", "Dataset", "DistillConfig", "DistillResult", "EdgekdError",
           "EvalResult", "ExportConfig", "PipelineConfig", "SpecialistConfig", "Teacher", "TeacherConfig",
           "TeacherResult", "TrainConfig", "build_specialists", "create_model", "distill", "evaluate",
           "export_executorch", "export_onnx", "list_models", "load_dataset", "load_teacher", "read_metadata",
           "register_model", "regate_specialists", "run_benchmark", "run_pipeline", "train_teachers"]
