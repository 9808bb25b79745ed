import pytest

from cxr.config import Config, resolve
from cxr.errors import ConfigError


def test_defaults_are_the_reference_systems_hyper_parameters():
    config = Config(data="x")
    assert (config.epochs, config.batch_size, config.learning_rate) == (100, 16, 0.001)
    assert (config.image_size, config.weights, config.backbone) == (224, "imagenet", "densenet169")
    assert config.split_fractions == [0.8, 0.1, 0.1]


def test_yaml_then_flags_override_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: /d\nepochs: 7\nbatch_size: 8\nclasses: [A, B]\n")
    config = resolve(path, epochs=3, image_size=None)
    assert (config.data, config.epochs, config.batch_size, config.image_size) == ("/d", 3, 8, 224)
    assert config.classes == ["A", "B"]


def test_saved_config_reads_back_identically(tmp_path):
    config = resolve(data="/d", epochs=2, bn_momentum=0.9)
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert resolve(path) == config


def test_unknown_setting_in_yaml_names_the_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: /d\nepoch: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown setting\(s\) epoch"):
        resolve(path)


def test_unreadable_or_invalid_yaml_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        resolve(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of settings"):
        resolve(listed)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data": None}, r"give a dataset folder \(--data\) or a split \(--split\)"),
        ({"image_size": 16}, "image_size must be an integer of at least 32"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": True}, "batch_size must be a positive integer"),
        ({"learning_rate": -1.0}, "learning_rate must be positive"),
        ({"backbone": "resnet"}, "backbone must be one of densenet169, tiny"),
        ({"split_fractions": [0.8, 0.1, 0.2]}, "split_fractions must be three positive numbers summing to 1"),
        ({"bn_momentum": 1.5}, r"bn_momentum must be empty or a number in \[0, 1\)"),
        ({"classes": ["only"]}, "classes must be a list of at least 2 folder names"),
    ],
)
def test_invalid_values_are_rejected_with_the_setting_named(overrides, message):
    values = {"data": "/d", **overrides}
    with pytest.raises(ConfigError, match=message):
        Config(**values).validate()


def test_cxr_version_names_the_package_keras_and_the_backend(capsys, monkeypatch):
    from importlib.metadata import version

    import cxr
    from cxr.cli import main

    for backend in ("tensorflow", "jax"):
        monkeypatch.setenv("KERAS_BACKEND", backend)
        monkeypatch.delitem(__import__("sys").modules, "keras", raising=False)  # ask as a fresh process would
        with pytest.raises(SystemExit) as done:
            main(["--version"])
        assert done.value.code == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith(f"cxr {cxr.__version__} (Keras {version('keras')}, backend {backend} ")


def test_a_run_config_records_its_environment_and_still_reads_back_as_settings(tmp_path):
    from cxr.environment import software

    config = resolve(data="/d", epochs=3)
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml(environment=software()))
    assert "environment:\n  cxr: " in path.read_text()
    assert resolve(path) == config  # --config of a run's config.yaml: the record is not a setting


def test_the_cpu_record_names_the_model_and_only_known_flags():
    from cxr.environment import CPU_FLAGS, cpu

    record = cpu()
    assert record["model"] and record["cores"] >= 1
    assert record["flags"] is None or set(record["flags"]) <= set(CPU_FLAGS)


def test_the_cpu_record_says_when_onednn_is_capped_to_an_older_instruction_set(monkeypatch):
    from cxr.environment import cpu

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert cpu()["onednn_max_isa"] is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu()["onednn_max_isa"] == "AVX2"


def test_the_record_says_when_glibcs_allocator_is_tuned(monkeypatch):
    from cxr.environment import record

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert record()["glibc_tunables"] is None
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072")
    assert record()["glibc_tunables"] == "glibc.malloc.mmap_threshold=131072"
