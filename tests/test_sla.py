"""The project SLA: every field, default, constraint, cross-field check and refused repo URL."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from flops_utils.repo_credentials import RepoCredentials
from flops_utils.service_config import LOG_LEVEL_ENV, BuilderConfig
from manager.lifecycle.specs import service_spec
from manager.sla import ProjectSLA, describe_validation_error, sla_to_training_settings
from orchestrator_adapters.base import ServiceKind

_DROP = object()  # sla(field=_DROP) leaves the field out
MINIMAL: dict[str, Any] = {"ml_repo_url": "https://github.com/example/mnist-sklearn.git", "ml_model_flavor": "sklearn"}


def sla(**changes: Any) -> dict[str, Any]:
    document = dict(MINIMAL)
    for key, value in changes.items():
        if value is _DROP:
            document.pop(key, None)
        else:
            document[key] = value
    return document


def training(**values: Any) -> dict[str, Any]:
    return sla(training_configuration=values)


def errors_of(document: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as caught:
        ProjectSLA.model_validate(document)
    return describe_validation_error(caught.value)


def test_defaults_match_the_reference() -> None:
    parsed = ProjectSLA.model_validate(MINIMAL)
    assert parsed.customer_id == "Admin"
    assert parsed.verbose is False
    assert parsed.use_devel_base_images is False
    assert parsed.supported_platforms == ["linux/amd64"]
    assert parsed.post_training_steps == []
    assert parsed.repo_ref is None and parsed.orchestrator is None
    tc = parsed.training_configuration
    assert (tc.mode, tc.data_tags, tc.training_rounds, tc.training_cycles) == ("classic", [], 3, 1)
    assert (tc.min_available_clients, tc.min_fit_clients, tc.min_evaluate_clients) == (1, 1, 1)
    assert tc.round_timeout_s is None
    rc = parsed.resource_constraints
    assert (rc.memory, rc.vcpus, rc.storage) == (100, 1, 0)


def test_reference_examples_are_accepted_unchanged() -> None:
    classic = {
        "customerID": "Admin",
        "ml_repo_url": "https://github.com/Malyuk-A/flops_ml_repo_mnist_sklearn.git",
        "ml_model_flavor": "sklearn",
        "training_configuration": {
            "data_tags": ["mnist"],
            "min_available_clients": 2,
            "min_fit_clients": 2,
            "min_evaluate_clients": 2,
        },
        "post_training_steps": ["build_image_for_trained_model", "deploy_trained_model_image"],
    }
    hierarchical = {
        "customerID": "Admin",
        "ml_repo_url": "git@github.com:example/cifar10-pytorch.git",
        "ml_model_flavor": "pytorch",
        "supported_platforms": ["linux/amd64", "linux/arm64"],
        "training_configuration": {
            "mode": "hierarchical",
            "data_tags": ["cifar10"],
            "training_cycles": 10,
            "training_rounds": 5,
            "min_available_clients": 3,
            "min_fit_clients": 3,
            "min_evaluate_clients": 3,
        },
        "post_training_steps": ["build_image_for_trained_model", "deploy_trained_model_image"],
    }
    assert ProjectSLA.model_validate(classic).training_configuration.min_fit_clients == 2
    parsed = ProjectSLA.model_validate(hierarchical)
    assert parsed.training_configuration.mode == "hierarchical"
    assert parsed.supported_platforms == ["linux/amd64", "linux/arm64"]
    assert parsed.post_training_steps == ["build_image_for_trained_model", "deploy_trained_model_image"]


@pytest.mark.parametrize(
    ("document", "attribute", "expected"),
    [
        (sla(customerID="alice"), "customer_id", "alice"),
        (sla(customer_id="bob"), "customer_id", "bob"),
        (sla(verbose=True), "verbose", True),
        (sla(ml_model_flavor="pytorch"), "ml_model_flavor", "pytorch"),
        (sla(ml_model_flavor="tensorflow"), "ml_model_flavor", "tensorflow"),
        (sla(ml_model_flavor="keras"), "ml_model_flavor", "keras"),
        (sla(supported_platforms=["linux/arm64"]), "supported_platforms", ["linux/arm64"]),
        (
            sla(post_training_steps=["build_image_for_trained_model"]),
            "post_training_steps",
            ["build_image_for_trained_model"],
        ),
        (
            sla(post_training_steps=["deploy_trained_model_image"]),
            "post_training_steps",
            ["build_image_for_trained_model", "deploy_trained_model_image"],
        ),
        (sla(repo_ref="release/v1.2"), "repo_ref", "release/v1.2"),
        (sla(orchestrator="kubernetes"), "orchestrator", "kubernetes"),
        (sla(ml_repo_url="  /srv/repos/mnist  "), "ml_repo_url", "/srv/repos/mnist"),
    ],
)
def test_top_level_fields(document: dict[str, Any], attribute: str, expected: Any) -> None:
    assert getattr(ProjectSLA.model_validate(document), attribute) == expected


@pytest.mark.parametrize(
    ("values", "attribute", "expected"),
    [
        ({"mode": "hierarchical"}, "mode", "hierarchical"),
        ({"data_tags": ["mnist", "digits-2", "a.b_c"]}, "data_tags", ["mnist", "digits-2", "a.b_c"]),
        ({"training_rounds": 7}, "training_rounds", 7),
        ({"training_cycles": 4}, "training_cycles", 4),
        ({"min_available_clients": 5, "min_fit_clients": 5, "min_evaluate_clients": 3}, "min_evaluate_clients", 3),
        ({"round_timeout_s": 12.5}, "round_timeout_s", 12.5),
    ],
)
def test_training_configuration_fields(values: dict[str, Any], attribute: str, expected: Any) -> None:
    parsed = ProjectSLA.model_validate(training(**values))
    assert getattr(parsed.training_configuration, attribute) == expected


@pytest.mark.parametrize(("verbose", "level"), [(True, "DEBUG"), (False, None)])
def test_verbose_makes_the_projects_services_log_at_debug(verbose: bool, level: str | None) -> None:
    parsed = ProjectSLA.model_validate(sla(verbose=verbose))
    config = BuilderConfig(
        project_id="p",
        mqtt={"host": "127.0.0.1", "port": 1883},
        repo_url="/srv/repo",
        flavor="sklearn",
        cache_dir="/tmp/cache",
    )
    spec = service_spec("builder", ServiceKind.BUILDER, config, python="python", image=None, verbose=parsed.verbose)
    assert spec.environment.get(LOG_LEVEL_ENV) == level


def test_resource_constraints() -> None:
    parsed = ProjectSLA.model_validate(sla(resource_constraints={"memory": 2048, "vcpus": 2.5, "storage": 500}))
    assert (parsed.resource_constraints.memory, parsed.resource_constraints.vcpus) == (2048, 2.5)
    assert parsed.resource_constraints.storage == 500


@pytest.mark.parametrize(
    ("document", "field", "message_part"),
    [
        (sla(ml_repo_url=_DROP), "ml_repo_url", "field required"),
        (sla(ml_model_flavor=_DROP), "ml_model_flavor", "field required"),
        (sla(ml_model_flavor="xgboost"), "ml_model_flavor", "sklearn"),
        (sla(customerID=""), "customerID", "pattern"),
        (sla(customerID="../etc"), "customerID", "pattern"),
        (sla(verbose="maybe"), "verbose", "bool"),
        (sla(supported_platforms=["windows/amd64"]), "supported_platforms[0]", "linux/amd64"),
        (sla(supported_platforms=[]), "supported_platforms", "at least 1"),
        (sla(use_devel_base_images=True), "use_devel_base_images", "not supported"),
        (
            sla(use_devel_base_images=True, supported_platforms=["linux/arm64"]),
            "use_devel_base_images",
            "leave use_devel_base_images false",
        ),
        (sla(post_training_steps=["publish"]), "post_training_steps[0]", "build_image_for_trained_model"),
        (training(mode="ring"), "training_configuration.mode", "classic"),
        (training(data_tags="mnist"), "training_configuration.data_tags", "list"),
        (training(data_tags=["../secrets"]), "training_configuration.data_tags[0]", "pattern"),
        (training(data_tags=["a b"]), "training_configuration.data_tags[0]", "pattern"),
        (training(training_rounds=0), "training_configuration.training_rounds", "greater than or equal to 1"),
        (training(training_cycles=0), "training_configuration.training_cycles", "greater than or equal to 1"),
        (training(min_available_clients=0), "training_configuration.min_available_clients", "greater than or equal"),
        (training(min_fit_clients=0), "training_configuration.min_fit_clients", "greater than or equal"),
        (training(min_evaluate_clients=0), "training_configuration.min_evaluate_clients", "greater than or equal"),
        (training(training_rounds=2.5), "training_configuration.training_rounds", "integer"),
        (training(round_timeout_s=0), "training_configuration.round_timeout_s", "greater than 0"),
        (
            training(min_available_clients=2, min_fit_clients=3),
            "training_configuration.min_fit_clients",
            "must not exceed min_available_clients (2)",
        ),
        (
            training(min_available_clients=2, min_evaluate_clients=4),
            "training_configuration.min_evaluate_clients",
            "must not exceed min_available_clients (2)",
        ),
        (training(min_fit_clients=2), "training_configuration.min_fit_clients", "min_available_clients (1)"),
        (sla(resource_constraints={"memory": 0}), "resource_constraints.memory", "greater than or equal to 1"),
        (sla(resource_constraints={"vcpus": 0}), "resource_constraints.vcpus", "greater than 0"),
        (sla(resource_constraints={"storage": -1}), "resource_constraints.storage", "greater than or equal to 0"),
        (sla(repo_ref="--upload-pack=x"), "repo_ref", "pattern"),
        (sla(repo_ref="main..evil"), "repo_ref", "repo_ref"),
        (sla(orchestrator="Kube rnetes"), "orchestrator", "pattern"),
    ],
)
def test_bad_values_name_their_field(document: dict[str, Any], field: str, message_part: str) -> None:
    errors = errors_of(document)
    assert field in [error["field"] for error in errors], errors
    message = next(error["message"] for error in errors if error["field"] == field)
    assert message_part in message


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (sla(colour="blue"), "colour"),
        (training(learning_rate=0.1), "training_configuration.learning_rate"),
        (sla(resource_constraints={"gpus": 1}), "resource_constraints.gpus"),
    ],
)
def test_unknown_fields_are_rejected_at_every_level(document: dict[str, Any], field: str) -> None:
    assert {"field": field, "message": "unknown field"} in errors_of(document)


@pytest.mark.parametrize("document", [None, "an SLA", [MINIMAL], 42])
def test_a_body_that_is_not_an_object_is_refused(document: Any) -> None:
    assert errors_of(document)[0]["field"] == "body"


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/example/repo.git",
        "http://127.0.0.1:8080/repo.git",
        "ssh://git@example.org:2222/team/repo.git",
        "git://example.org/repo.git",
        "git@github.com:example/repo.git",
        "file:///srv/repos/mnist",
        "/srv/repos/mnist",
        "examples/mnist_sklearn",
        "./mnist",
    ],
)
def test_accepted_repo_urls(url: str) -> None:
    assert ProjectSLA.model_validate(sla(ml_repo_url=url)).ml_repo_url == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("--upload-pack=touch /tmp/pwned", "must not start with '-'"),
        ("-oProxyCommand=evil", "must not start with '-'"),
        ("https://example.org/repo.git --upload-pack=evil", "--upload-pack"),
        ("/srv/repo --receive-pack=x", "--receive-pack"),
        ("ext::sh -c touch% /tmp/pwned", "transport helper"),
        ("fd::17", "transport helper"),
        ("https://example.org/a/../../etc/passwd", "'..'"),
        ("../../etc", "'..'"),
        ("git@example.org:../../etc", "'..'"),
        ("ssh://-oProxyCommand=evil/repo", "no valid host"),
        ("https:///repo.git", "no valid host"),
        ("ftp://example.org/repo.git", "not supported"),
        ("file://relative/path", "absolute path"),
        ("https://example.org/repo\n.git", "control characters"),
        ("   ", "must not be empty"),
    ],
)
def test_refused_repo_urls(url: str, reason: str) -> None:
    errors = errors_of(sla(ml_repo_url=url))
    assert errors[0]["field"] == "ml_repo_url"
    assert reason in errors[0]["message"]


def test_credentials_in_the_repo_url_are_taken_out_and_never_dumped() -> None:
    parsed = ProjectSLA.model_validate(sla(ml_repo_url="https://bob:t%40ken-1@git.example.org/ml/repo.git"))
    assert parsed.ml_repo_url == "https://git.example.org/ml/repo.git"
    assert parsed.repo_credentials == RepoCredentials(username="bob", password="t@ken-1")
    explicit = ProjectSLA.model_validate(
        sla(
            ml_repo_url="https://git.example.org/ml/repo.git",
            repo_credentials={"username": "bob", "password": "t@ken-1"},
        )
    )
    assert explicit.repo_credentials == parsed.repo_credentials
    for document in (parsed, explicit):
        assert "ken-1" not in document.model_dump_json() + repr(document)
        assert "repo_credentials" not in document.model_dump(by_alias=True)
    token_only = ProjectSLA.model_validate(sla(ml_repo_url="https://ghp_abc123@github.com/o/r.git"))
    assert token_only.repo_credentials == RepoCredentials(username="ghp_abc123", password="")


def test_a_query_string_in_the_repo_url_is_taken_out_like_credentials() -> None:
    parsed = ProjectSLA.model_validate(sla(ml_repo_url="https://git.example.org/ml/repo.git?token=s3cr3t-q&x=1"))
    assert parsed.ml_repo_url == "https://git.example.org/ml/repo.git"
    assert parsed.repo_credentials == RepoCredentials(query="token=s3cr3t-q&x=1")
    assert "s3cr3t" not in parsed.model_dump_json() + repr(parsed)
    both = ProjectSLA.model_validate(sla(ml_repo_url="https://bob:pw-1@git.example.org/r.git?private_token=s3cr3t-q"))
    assert both.ml_repo_url == "https://git.example.org/r.git"
    assert both.repo_credentials == RepoCredentials(username="bob", password="pw-1", query="private_token=s3cr3t-q")
    explicit = ProjectSLA.model_validate(
        sla(
            ml_repo_url="https://git.example.org/r.git?token=s3cr3t-q",
            repo_credentials={"username": "bob", "password": "pw-1"},
        )
    )
    assert explicit.repo_credentials == RepoCredentials(username="bob", password="pw-1", query="token=s3cr3t-q")
    builder = BuilderConfig.model_validate(
        {
            "project_id": "p",
            "instance_name": "builder",
            "flavor": "sklearn",
            "cache_dir": "/c",
            "mqtt": {},
            "repo_url": "https://h.example/r.git?token=s3cr3t-q",
        }
    )
    assert builder.repo_url == "https://h.example/r.git" and builder.repo_credentials is not None
    assert builder.repo_credentials.query == "token=s3cr3t-q" and "s3cr3t" not in repr(builder)
    ssh = ProjectSLA.model_validate(sla(ml_repo_url="ssh://git@example.org/r.git"))
    assert ssh.ml_repo_url == "ssh://git@example.org/r.git" and ssh.repo_credentials is None


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (
            sla(ml_repo_url="https://a:b@example.org/r.git", repo_credentials={"username": "a", "password": "b"}),
            "given twice",
        ),
        (
            sla(ml_repo_url="ssh://git@example.org/r.git", repo_credentials={"username": "a", "password": "b"}),
            "http(s) repository URLs only",
        ),
        (sla(repo_credentials={"username": "a", "password": "b\nprotocol=file"}), "pattern"),
        (sla(repo_credentials={"username": "", "password": "b"}), "at least 1 character"),
    ],
)
def test_bad_repo_credentials_are_refused_without_echoing_them(document: dict[str, Any], reason: str) -> None:
    errors = errors_of(document)
    assert errors[0]["field"].startswith("repo_credentials"), errors
    assert reason in errors[0]["message"]
    assert "protocol=file" not in str(errors)


def test_training_settings_for_the_services() -> None:
    parsed = ProjectSLA.model_validate(
        training(mode="hierarchical", data_tags=["x"], training_rounds=2, training_cycles=3, round_timeout_s=9)
    )
    settings = sla_to_training_settings(parsed)
    assert (settings.mode, settings.data_tags, settings.training_rounds, settings.training_cycles) == (
        "hierarchical",
        ["x"],
        2,
        3,
    )
    assert settings.round_timeout_s == 9
    default_timeout = sla_to_training_settings(ProjectSLA.model_validate(MINIMAL)).round_timeout_s
    assert default_timeout > 0  # the services' default applies when the SLA leaves it out


def test_dump_round_trips_with_the_reference_field_name() -> None:
    parsed = ProjectSLA.model_validate(sla(customerID="carol", post_training_steps=["deploy_trained_model_image"]))
    dumped = parsed.model_dump(mode="json", by_alias=True)
    assert dumped["customerID"] == "carol"
    assert ProjectSLA.model_validate(dumped) == parsed
