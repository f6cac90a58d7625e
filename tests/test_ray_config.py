"""How an operator configures the service on Ray, checked without starting Ray: the example
Serve config file (``examples/ray-serve.yaml``) against Ray Serve's own schema and our
application builder's arguments, and the ``serve`` command's replica options."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from fheqnn.cli import main
from fheqnn.errors import InvalidParameterError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ray-serve.yaml"


@pytest.fixture(scope="module")
def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_the_example_config_is_a_valid_serve_config_for_our_builder(example, tiny_models) -> None:
    from ray_cluster import ray_env

    os.environ.update(ray_env())  # before ray is imported (loopback only if it ever starts)
    from ray.serve.schema import ServeDeploySchema

    from fheqnn.serving import ray_backend

    schema = ServeDeploySchema.model_validate(example)
    (app,) = schema.applications
    module, _, name = app.import_path.partition(":")
    assert module == "fheqnn.serving.ray_backend" and getattr(ray_backend, name) is not None
    assert [d.name for d in app.deployments] == [ray_backend.replica_deployment().name]
    args = {**app.args, "models": [str(tiny_models.a)]}  # the example's folder is a placeholder
    config, max_keys = ray_backend.config_from_args(args)
    assert config.model_folders == (tiny_models.a,)
    assert config.key_store == Path("/srv/fheqnn/keys") and config.backend == "ray"
    assert max_keys == ray_backend.DEFAULT_MAX_KEYS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "args.models: give a list"),
        ({"models": "circuits/bc"}, "args.models: give a list"),
        ({"models": ["/m"], "replicas": 2}, r"unknown args \['replicas'\]"),
        ({"models": ["/m"], "max_keys": 0}, "args.max_keys: a positive integer"),
        ({"models": ["/m"], "token_env": "FHEQNN_TEST_UNSET_TOKEN"}, "is not set or empty"),
        ({"models": ["/m"], "max_uploads": 0}, "max_uploads"),
        ({"models": ["circuits/bc"]}, "args.models: give absolute folder paths"),
        ({"models": [1]}, "args.models: give absolute folder paths"),
        ({"models": ["/m"], "key_store": "keys"}, "args.key_store: give absolute folder paths"),
    ],
)
def test_builder_arguments_are_checked_before_anything_starts(args, message) -> None:
    from fheqnn.serving.ray_backend import config_from_args

    os.environ.pop("FHEQNN_TEST_UNSET_TOKEN", None)
    with pytest.raises(InvalidParameterError, match=message):
        config_from_args(args)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--autoscale", "1:2"], "--replicas and --autoscale need --ray"),
        (["--autoscale", "1:2", "--replicas", "2", "--ray", "local"], "not both"),
        (["--autoscale", "3:1", "--ray", "local"], "expected MIN:MAX replicas"),
        (["--autoscale", "0:0", "--ray", "local"], "expected MIN:MAX replicas"),
        (["--autoscale", "two", "--ray", "local"], "expected MIN:MAX replicas"),
    ],
)
def test_replica_options_are_checked(tiny_models, capsys, extra, message) -> None:
    try:
        code = main(["serve", str(tiny_models.a), "--port", "0", *extra])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_shipped_models_unpack_once_per_node_and_repair_a_damaged_copy(tiny_models, tmp_path):
    from fheqnn.runtime.artifacts import ArtifactError, open_model_folder
    from fheqnn.serving.ray_backend import SHIPPED_FILES
    from fheqnn.serving.shipped_models import pack, unpack

    packed = pack(open_model_folder(tiny_models.a), SHIPPED_FILES)
    first = unpack(packed, tmp_path)
    assert first == tmp_path / packed["model_id"] / tiny_models.a.name
    assert open_model_folder(first).model_id == packed["model_id"]  # checksums verified
    assert unpack(packed, tmp_path) == first  # a second process of the node reuses it
    (first / "server.zip").write_bytes(b"damaged")
    assert unpack(packed, tmp_path) == first
    assert open_model_folder(first).model_id == packed["model_id"]  # rewritten whole
    assert sorted(p.name for p in (tmp_path / packed["model_id"]).iterdir()) == [first.name]
    for bad in ({"model_id": "../x"}, {"files": {"../evil": b""}}, {"files": {".hidden": b""}}):
        with pytest.raises(ArtifactError, match="shipped model"):
            unpack({**packed, **bad}, tmp_path)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", ""])
def test_a_bad_proxy_wait_in_the_environment_is_refused_before_serve_starts(
    monkeypatch, value
) -> None:
    from fheqnn.serving import ray_backend

    monkeypatch.setenv(ray_backend.PROXY_READY_ENV, value)
    with pytest.raises(InvalidParameterError, match="must be a positive number of seconds"):
        ray_backend.proxy_ready_seconds()


def test_the_proxy_wait_is_the_environment_s_or_serve_start_s(monkeypatch) -> None:
    from fheqnn.serving import ray_backend

    monkeypatch.delenv(ray_backend.PROXY_READY_ENV, raising=False)
    assert ray_backend.proxy_ready_seconds() == ray_backend.PROXY_READY_SECONDS == "60"
    monkeypatch.setenv(ray_backend.PROXY_READY_ENV, "90.5")
    assert ray_backend.proxy_ready_seconds() == "90.5"
