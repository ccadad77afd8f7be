"""params.yaml validation: every class of bad value stops with one line that names the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embedlab.core.params import ParamsError, load_params, parse_params

from ..conftest import REPO, copy_repo, dvc


def test_repo_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "digits"


def test_the_cifar10_recipe_is_valid() -> None:
    """The preset users copy over params.yaml must keep passing validation as params evolve."""
    recipe = load_params(REPO / "results" / "cifar10" / "params.yaml")
    assert next(iter(recipe.backbones)) == "smallnet" and recipe.evaluate.gallery == "train+val"
    assert recipe.serve.gallery == "train+val" and recipe.embed.flip_average


def test_dvc_exp_style_values_parse(tmp_path: Path) -> None:
    """``dvc exp run -S`` writes plain YAML scalars; strings of numbers must not sneak through as numbers."""
    params = parse_params({"data": {"image_size": 48, "val_fraction": 0.2, "max_per_class": None}})
    assert params.data.image_size == 48 and params.data.max_per_class is None
    for quoted in ({"data": {"image_size": "48"}}, {"train": {"lr": "0.01"}}, {"serve": {"k": "5"}}):
        with pytest.raises(ParamsError, match=r"Input should be a valid (integer|number) \(got '"):
            parse_params(quoted)
    # ``1e-4`` has no dot: YAML 1.1 (PyYAML) reads it as text, YAML 1.2 (DVC, editors) as a number; params.yaml is
    # read as 1.2, while a quoted "1e-4" stays text and is refused.
    (tmp_path / "params.yaml").write_text("train:\n  lr: 1e-4\n  weight_decay: 5E-4\n  epochs: 3\n")
    train = load_params(tmp_path / "params.yaml").train
    assert (train.lr, train.weight_decay, train.epochs) == (1e-4, 5e-4, 3) and isinstance(train.epochs, int)
    (tmp_path / "params.yaml").write_text('train:\n  lr: "1e-4"\n')
    with pytest.raises(ParamsError, match=r"train\.lr: Input should be a valid number"):
        load_params(tmp_path / "params.yaml")


def test_serve_k_must_fit_under_max_k() -> None:
    assert parse_params({"serve": {"k": 20, "max_k": 20}}).serve.k == 20
    with pytest.raises(ParamsError, match=r"^params\.yaml: serve\.k: must be <= serve\.max_k \(5\) \(got 8\)$"):
        parse_params({"serve": {"max_k": 5}})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"dta": {}}, "params.yaml: dta: unknown key; allowed keys: data, augment, backbones, model, train"),
        ({"data": {"sorce": "digits"}}, "params.yaml: data.sorce: unknown key; allowed keys: source, url, path"),
        ({"data": {"source": "mnist"}}, "params.yaml: data.source: Input should be 'digits', 'cifar10' or 'folder'"),
        ({"data": {"image_size": "big"}}, "params.yaml: data.image_size: Input should be a valid integer"),
        ({"data": {"image_size": -32}}, "params.yaml: data.image_size: Input should be greater than or equal to 8"),
        ({"data": {"val_fraction": 1.5}}, "params.yaml: data.val_fraction: Input should be less than 1 (got 1.5)"),
        ({"data": {"test_fraction": 0}}, "params.yaml: data.test_fraction: Input should be greater than 0 (got 0)"),
        ({"data": {"source": "folder"}}, "params.yaml: data.path: required when data.source is folder"),
        ({"augment": {"flip": "diagonal"}}, "params.yaml: augment.flip: Input should be 'none', 'horizontal'"),
        ({"augment": {"zoom": -0.1}}, "params.yaml: augment.zoom: Input should be greater than or equal to 0"),
        ({"data": []}, "params.yaml: data: Input should be a valid dictionary"),
    ],
)
def test_bad_values_name_the_key(raw: dict, expected: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    message = str(err.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("data: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_stage_rejects_before_work(tmp_path: Path) -> None:
    """A stage run with a bad value exits non-zero with one line on stderr and writes nothing."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["val_fraction"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "download.py")], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: data.val_fraction: Input should be less than 1 (got 2)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_params_that_are_not_yaml_stop_dvc_repro_before_any_stage(tmp_path: Path) -> None:
    """DVC reads params.yaml itself (the backbones list drives `foreach`), so its own error comes first: it names
    the file, the line and the column, and no stage runs."""
    repo = copy_repo(tmp_path / "repo")
    (repo / "params.yaml").write_text("data:\n  source: [digits\n")
    result = dvc("repro", cwd=repo, check=False)
    assert result.returncode != 0
    assert "params.yaml" in result.stderr and "line 2" in result.stderr, result.stderr
    assert "Running stage" not in result.stdout
    assert not (repo / "data" / "raw").exists()
    one_line = subprocess.run(
        [sys.executable, "-m", "embedlab.cli", "search", "x.png", "--model", "smallnet"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert one_line.returncode == 2 and len(one_line.stderr.strip().splitlines()) == 1
    assert one_line.stderr.startswith("error: params.yaml: not valid YAML: "), one_line.stderr


def test_backbone_overrides_apply_to_that_backbone_only() -> None:
    params = parse_params({"backbones": {"resnet50": {"lr": 0.01, "embedding_dim": 64}, "vgg16": None}})
    model, train = params.for_backbone("resnet50")
    assert train.lr == 0.01 and model.embedding_dim == 64
    model, train = params.for_backbone("vgg16")
    assert train.lr == 1e-3 and model.embedding_dim == 128


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"backbones": {"alexnet": None}}, "params.yaml: backbones.alexnet: unknown name; allowed: 'densenet121'"),
        ({"backbones": {"vgg16": {"lrr": 1}}}, "params.yaml: backbones.vgg16.lrr: unknown key; allowed keys: weights"),
        ({"backbones": {}}, "params.yaml: backbones: Dictionary should have at least 1 item"),
        ({"train": {"epochs": 2, "warmup_epochs": 2}}, "params.yaml: train.warmup_epochs: must be < train.epochs"),
        ({"train": {"loss": "arcface"}}, "params.yaml: train.loss: Input should be 'softmax', 'triplet'"),
        ({"evaluate": {"metric": "manhattan"}}, "params.yaml: evaluate.metric: Input should be 'cosine'"),
    ],
)
def test_bad_model_and_train_values(raw: dict, expected: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert str(err.value).startswith(expected), str(err.value)


def test_override_out_of_range_names_the_backbone() -> None:
    with pytest.raises(ParamsError, match=r"^params\.yaml: backbones\.vgg16\.warmup_epochs: must be < train\.epochs"):
        parse_params({"backbones": {"vgg16": {"epochs": 1, "warmup_epochs": 3}}})


def test_bare_on_off_from_dvc_exp_run_reads_as_the_word() -> None:
    raw = yaml.safe_load("train: {mixed_precision: on}")  # what `dvc exp run -S train.mixed_precision=on` writes
    assert raw["train"]["mixed_precision"] is True
    assert parse_params(raw).train.mixed_precision == "on"
    assert parse_params({"train": {"mixed_precision": False}}).train.mixed_precision == "off"
    with pytest.raises(ParamsError, match=r"train\.mixed_precision: Input should be 'auto', 'on' or 'off'"):
        parse_params({"train": {"mixed_precision": "yes"}})


def test_mixed_precision_is_a_per_backbone_override() -> None:
    params = parse_params({"backbones": {"vgg16": {"mixed_precision": True}, "resnet50": None}})
    assert params.for_backbone("vgg16")[1].mixed_precision == "on"
    assert params.for_backbone("resnet50")[1].mixed_precision == "auto"
