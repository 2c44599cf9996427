"""edgekd.config: the one source of defaults; the command line reads its defaults from it."""

import pytest

from edgekd.cli import cli
from edgekd.config import DistillConfig, PipelineConfig, TeacherConfig, TrainConfig, defaults
from edgekd.errors import ConfigError


def _cli_defaults(*path):
    command = cli
    for name in path:
        command = command.commands[name]
    return {p.name: p.default for p in command.params}


def _train_fields(cli_defaults, train):
    return {k: cli_defaults[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "patience", "jitter", "precision")} == {
        k: getattr(train, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "patience", "jitter", "precision")}


def test_teacher_train_means_teacher_config():
    flags, config = _cli_defaults("teacher", "train"), TeacherConfig()
    assert (flags["arch"], flags["ensemble"], flags["combine"]) == (config.arch, config.ensemble, config.combine)
    assert _train_fields(flags, config.train)


def test_distill_means_distill_config():
    flags, config = _cli_defaults("distill"), DistillConfig()
    assert (flags["student"], float(flags["temperature"]), float(flags["alpha"]), flags["method"], flags["baseline"]) == (
        config.student, config.temperature, config.alpha, config.method, config.baseline)
    assert int(flags["views"]) == config.views and _train_fields(flags, config.train)


def test_pipeline_means_pipeline_config():
    flags, config = _cli_defaults("pipeline"), PipelineConfig()
    assert (flags["ensemble"], flags["teacher_epochs"], flags["student"], flags["epochs"], flags["jitter"]) == (
        config.ensemble, config.teacher_epochs, config.student, config.epochs, config.jitter)
    assert flags["temperature"] == ("auto" if config.temperature is None else f"{config.temperature:g}")


def test_specialists_build_means_specialist_config():
    from specialists.config import SpecialistConfig

    flags, config = _cli_defaults("specialists", "build"), SpecialistConfig()
    names = ("cluster_temperature", "top_n", "special_fraction", "per_cluster", "tol", "max_steps", "module_steps")
    assert {k: flags[k] for k in names} == {k: getattr(config, k) for k in names}
    assert flags["clusters"] == "auto" and config.clusters is None and _train_fields(flags, config.train)


def test_defaults_reads_without_building():
    assert defaults(DistillConfig)["student"] == "mlp" and "train" in defaults(TeacherConfig)


def test_configs_validate_where_they_are_built():
    with pytest.raises(ConfigError, match="'ensemble' parameter"):
        TeacherConfig(ensemble=0)
    with pytest.raises(ConfigError, match="Unknown architecture 'vit'"):
        DistillConfig(student="vit")


def test_a_library_config_and_the_cli_agree_on_the_device_and_check_it():
    """TrainConfig defaulted to the CPU where --device defaults to auto: a notebook on a GPU machine trained on
    the CPU, and TrainConfig(device='gpu') was accepted until training began."""
    from edgekd.training import TrainConfig

    for command in (("teacher", "train"), ("distill",), ("evaluate",), ("specialists", "build")):
        assert _cli_defaults(*command)["device"] == TrainConfig().device == "auto"
    with pytest.raises(ConfigError, match="'device' parameter must be one of 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        TrainConfig(device="gpu")
    assert TrainConfig(device="cuda:1").device == "cuda:1"   # whether it exists is resolve_device's to say


@pytest.mark.parametrize("grid", ["temperature_grid", "alpha_grid"])
def test_an_empty_search_grid_is_refused_when_it_is_searched(grid):
    """An empty grid was accepted and distill failed with max() of an empty sequence after the teacher's targets."""
    fixed = {"temperature_grid": {"alpha": 0.5}, "alpha_grid": {"temperature": 4.0}}[grid]
    searched = {"temperature_grid": {"temperature": None}, "alpha_grid": {"alpha": None}}[grid]
    with pytest.raises(ConfigError, match=f"The '{grid}' parameter must list at least one value"):
        DistillConfig(**searched, **{grid: ()})
    DistillConfig(**fixed, **{grid: ()})   # not searched: no grid needed


@pytest.mark.parametrize("build, message", [
    (lambda: TrainConfig(lr="0.01"), "The 'lr' parameter must be > 0 and finite. Got '0.01' instead."),
    (lambda: DistillConfig(temperature="auto"), "The 'temperature' parameter must be > 0 and finite. Got 'auto' instead."),
    (lambda: TrainConfig(flip="no"), "The 'flip' parameter must be True or False. Got 'no' instead."),
    (lambda: TrainConfig(epochs=True), "The 'epochs' parameter must be an integer >= 1. Got True instead."),
])
def test_a_value_of_the_wrong_type_is_one_config_error(build, message):
    """A string compared with a number was a raw TypeError; flip="no" turned mirroring on; epochs=True was 1."""
    with pytest.raises(ConfigError) as refused:
        build()
    assert str(refused.value) == message


def test_numpy_numbers_are_numbers():
    import numpy as np

    assert TrainConfig(epochs=np.int64(3), lr=np.float32(0.01), flip=np.bool_(True)).epochs == 3


def test_one_value_where_a_tuple_goes_is_one_item():
    """skip="bench" was read a letter at a time ("Got 'b'"), clusters="auto" (the command line's spelling) too, and a
    list left a frozen config unhashable."""
    from specialists.config import SpecialistConfig

    assert PipelineConfig(skip="bench").skip == ("bench",)
    assert DistillConfig(search_methods="kd").search_methods == ("kd",)
    assert SpecialistConfig(clusters="auto").clusters is None and SpecialistConfig(clusters=[3, 4]).clusters == (3, 4)
    assert hash(DistillConfig(temperature=None, temperature_grid=[1, 2])) is not None
    with pytest.raises(ConfigError, match="The 'omit_classes' parameter must be an integer >= 0. Got '3' instead."):
        DistillConfig(omit_classes="3")


@pytest.mark.parametrize("kwargs, message", [
    (dict(student="nope"), "Unknown architecture 'nope'"), (dict(teacher_arch="zzz"), "Unknown architecture 'zzz'"),
    (dict(device="gpu"), "'device' parameter must be one of"), (dict(seed=-1), "'seed' parameter"),
    (dict(temperature=-1), "'temperature' parameter must be > 0"), (dict(alpha=3), "'alpha' parameter must be in [0, 1]"),
    (dict(train_limit=-3), "'train_limit' parameter must be an integer >= 1")])
def test_a_pipeline_config_is_checked_when_built(kwargs, message):
    """These were accepted by PipelineConfig and refused only once run_pipeline started."""
    with pytest.raises(ConfigError) as refused:
        PipelineConfig(**kwargs)
    assert message in str(refused.value)


@pytest.mark.parametrize("build, name", [
    (lambda: DistillConfig(temperature=1e20), "temperature"),
    (lambda: DistillConfig(temperature=None, temperature_grid=(2.0, 5e3)), "temperature_grid"),
    (lambda: PipelineConfig(temperature=1e20), "temperature"),
])
def test_a_temperature_past_any_use_is_refused_before_training(build, name):
    """-T 1e20 trained until T^2 overflowed the loss ("lower --lr or check the data"), in pipeline after the teachers."""
    with pytest.raises(ConfigError, match=f"The '{name}' parameter must be at most 1000"):
        build()


def test_the_specialists_settings_bound_the_cluster_temperature_and_the_modules_steps():
    from specialists.config import SpecialistConfig

    with pytest.raises(ConfigError, match="The 'cluster_temperature' parameter must be at most 1000"):
        SpecialistConfig(cluster_temperature=1e30)
    with pytest.raises(ConfigError, match=r"The 'module_steps' parameter must be at most max_steps \(5000\)"):
        SpecialistConfig(module_steps=10**8)
    assert SpecialistConfig(module_steps=5000).module_steps == 5000
