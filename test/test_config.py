"""Strict YAML -> dataclass loading of every stage config."""
from pathlib import Path

import pytest

from foundry_core.typed_yaml import ConfigError, from_dict, load_config, parse_override, to_dict
from foundry_core.configs import (DataConfig, FinetuneConfig, JEPAConfig, ModelConfig, OptimConfig,
                                  PretrainConfig)
from foundry_core.stages.experiment import ExperimentConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
PREFIXES = {"pretrain": PretrainConfig, "demo": PretrainConfig, "finetune": FinetuneConfig,
            "partseg": FinetuneConfig, "experiment": ExperimentConfig}
YAMLS = sorted(CONFIG_DIR.glob("*.yaml"))


def _cls_for(path: Path):
    return next((cls for prefix, cls in PREFIXES.items() if path.name.startswith(prefix)), None)


def test_config_dir_has_files():
    assert any(_cls_for(p) for p in YAMLS), f"no stage config found in {CONFIG_DIR}"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path):
    cls = _cls_for(path)
    if cls is None:
        pytest.skip(f"{path.name}: not a stage config")
    cfg = load_config(cls, path)
    assert type(cfg) is cls
    models = [cfg.pretrain.model, cfg.finetune.model] if cls is ExperimentConfig else [cfg.model]
    assert all(isinstance(m, ModelConfig) for m in models)
    # the loaded dataclass round-trips through a plain dict
    assert from_dict(cls, to_dict(cfg)) == cfg


def test_shipped_values_are_typed(tmp_path):
    cfg = load_config(FinetuneConfig, CONFIG_DIR / "partseg_synthetic.yaml")
    assert cfg.task == "partseg" and cfg.seg_layers == [2, 3, 4] and cfg.data.with_seg is True
    assert cfg.model.dim == 192 and isinstance(cfg.optim.lr, float)
    exp = load_config(ExperimentConfig, CONFIG_DIR / "experiment_shapes69.yaml")
    assert exp.seeds == [0, 1] and exp.pretrain.model.encoder == "vit_t"
    assert len(exp.pretrain.jepa.ema) == 2 and all(isinstance(v, float) for v in exp.pretrain.jepa.ema)


def _write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,key,where", [
    ("optim: {lr: 0.1, epochs: 3}\nbogus: 1\n", "bogus", None),
    ("optim: {lr: 0.1, epoch: 3}\n", "epoch", "optim"),
    ("model: {encoder: vit_t, width: 3}\n", "width", "model"),
])
def test_unknown_key(tmp_path, text, key, where):
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, _write(tmp_path, text))
    msg = str(e.value)
    assert f"'{key}'" in msg and "valid keys" in msg
    valid = {None: ["model", "optim", "jepa"], "optim": ["epochs", "warmup_epochs", "lr"],
             "model": ["encoder", "num_groups"]}[where]
    assert all(f"'{v}'" in msg for v in valid)
    if where:
        assert f"{where}:" in msg


@pytest.mark.parametrize("text,path", [
    ("optim: {epochs: ten}\n", "optim.epochs"),            # string for int
    ("optim: {epochs: 2.5}\n", "optim.epochs"),            # float for int
    ("optim: {epochs: true}\n", "optim.epochs"),           # bool for int
    ("run: {amp: 1}\n", "run.amp"),                        # int for bool
    ("run: {progress: 'yes'}\n", "run.progress"),          # string for bool
    ("optim: {lr: fast}\n", "optim.lr"),                   # string for float
    ("data: {split: random}\n", "data.split"),             # wrong Literal
    ("probe: {classifier: knn}\n", "probe.classifier"),    # wrong Literal
    ("model: {dim: big}\n", "model.dim"),                  # int | None
    ("data: {augment: scale}\n", "data.augment"),          # str for list
    ("jepa: {ema: [0.9, x]}\n", "jepa.ema[1]"),            # list item
    ("optim: 3\n", "optim"),                               # scalar for a section
])
def test_ill_typed_values_name_the_path(tmp_path, text, path):
    with pytest.raises(ConfigError, match=path.replace("[", r"\[").replace("]", r"\]") + ":"):
        load_config(PretrainConfig, _write(tmp_path, text))


def test_finetune_literal_task(tmp_path):
    with pytest.raises(ConfigError, match=r"task: 'detect' is not one of"):
        load_config(FinetuneConfig, _write(tmp_path, "task: detect\n"))


def test_ints_accepted_for_floats(tmp_path):
    cfg = load_config(PretrainConfig, _write(tmp_path, "optim: {lr: 1, grad_clip: 0}\njepa: {ema: [1, 1]}\n"))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.jepa.ema == [1.0, 1.0]


def test_overrides_apply_with_yaml_typing(tmp_path):
    path = _write(tmp_path, "optim: {lr: 0.001, epochs: 4}\nrun: {amp: true}\n")
    cfg = load_config(PretrainConfig, path, ["optim.lr=0.01", "optim.epochs=6", "run.amp=false",
                                             "data.augment=[jitter, mirror]", "model.dim=null",
                                             "run.out_dir=runs/x"])
    assert cfg.optim.lr == 0.01 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.epochs == 6 and cfg.run.amp is False
    assert cfg.data.augment == ["jitter", "mirror"] and cfg.model.dim is None and cfg.run.out_dir == "runs/x"
    # overrides on defaults (no file), and a new section
    cfg = load_config(FinetuneConfig, None, ["task=partseg", "seg_layers=[1, 2]", "model.encoder=vit_s"])
    assert cfg.task == "partseg" and cfg.seg_layers == [1, 2] and cfg.model.encoder == "vit_s"
    # later overrides win
    assert load_config(PretrainConfig, None, ["optim.epochs=3", "optim.epochs=5"]).optim.epochs == 5


def test_overrides_are_type_checked():
    with pytest.raises(ConfigError, match="optim.epochs"):
        load_config(PretrainConfig, None, ["optim.epochs=3.5"])
    with pytest.raises(ConfigError, match="run.amp"):
        load_config(PretrainConfig, None, ["run.amp=1"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(PretrainConfig, None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="must look like"):
        load_config(PretrainConfig, None, ["optim.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(PretrainConfig, None, ["optim=3", "optim.lr=0.1"])


def test_parse_override():
    assert parse_override("optim.lr=0.5") == (["optim", "lr"], 0.5)
    assert parse_override(" run.out_dir = a=b") == (["run", "out_dir"], "a=b")


def test_scientific_notation_override():
    assert parse_override("optim.lr=1e-3") == (["optim", "lr"], 0.001)
    assert load_config(PretrainConfig, None, ["optim.lr=1e-3"]).optim.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("overrides,match", [
    (["optim.epochs=2", "optim.warmup_epochs=3"], "warmup_epochs"),
    (["optim.warmup_epochs=-1"], "warmup_epochs"),
    (["optim.lr=0"], "optim.lr"),
    (["optim.batch_size=0"], "batch_size"),
    (["model.encoder=custom"], "custom"),
    (["model.encoder=custom", "model.dim=32", "model.depth=2"], "custom"),
    (["model.num_groups=0"], "num_groups"),
    (["model.in_channels=2"], "in_channels"),
    (["data.test_fraction=1.0"], "test_fraction"),
    (["data.num_points=0"], "num_points"),
    (["jepa.target_scale=[0.3, 0.2]"], "target_scale"),
    (["jepa.context_scale=[0.5, 1.5]"], "context_scale"),
    (["jepa.ema=[0.99, 0.9]"], "ema"),
])
def test_post_init_rejects_invalid_values(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(PretrainConfig, None, overrides)


def test_post_init_accepts_boundaries():
    cfg = load_config(PretrainConfig, None, ["optim.epochs=2", "optim.warmup_epochs=2",
                                             "model.encoder=custom", "model.dim=32", "model.depth=2",
                                             "model.heads=2", "jepa.context_scale=[1.0, 1.0]"])
    assert cfg.optim.warmup_epochs == 2 and cfg.model.dim == 32
    assert OptimConfig(epochs=1, warmup_epochs=0).warmup_epochs == 0
    assert DataConfig(test_fraction=0.5).test_fraction == 0.5


@pytest.mark.parametrize("override", ["jepa.target_scale=[0.1, 0.2, 0.3]", "jepa.context_scale=[0.5]",
                                      "jepa.ema=[0.9]"])
def test_jepa_wrong_length_lists_are_config_errors(override):
    try:
        load_config(PretrainConfig, None, [override])
    except ConfigError:
        return
    except Exception as e:  # noqa: BLE001 - any other exception is the bug
        raise AssertionError(f"{type(e).__name__}: {e}") from e
    raise AssertionError("accepted")


def test_unknown_encoder_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="vit_x"):
        load_config(PretrainConfig, None, ["model.encoder=vit_x"])


def test_direct_construction_validates():
    with pytest.raises(ConfigError):
        OptimConfig(epochs=1, warmup_epochs=2)
    with pytest.raises(ConfigError):
        JEPAConfig(target_scale=[0.0, 0.2])
    with pytest.raises(ConfigError):
        ModelConfig(encoder="custom", dim=32)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PretrainConfig, tmp_path)   # a directory is not a config file


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml(tmp_path, text):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(PretrainConfig, _write(tmp_path, text))


def test_invalid_yaml_and_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PretrainConfig, _write(tmp_path, "optim: {lr: [\n"))
    assert load_config(PretrainConfig, _write(tmp_path, "", "empty.yaml")) == PretrainConfig()


def test_error_message_names_the_file(tmp_path):
    path = _write(tmp_path, "optim: {epochs: x}\n", "my_run.yaml")
    with pytest.raises(ConfigError, match="my_run.yaml"):
        load_config(PretrainConfig, path)
