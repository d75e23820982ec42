"""The deployment files (Dockerfile, deploy/ecs, deploy/k8s, deploy/iam, deploy/alerts) pass offline validators
that know the real schemas, and each validator really rejects a broken file.

The validators are ``scripts/validate_deploy.py``'s (hadolint, parliament, botocore's ECS model,
kubernetes-validate); a missing one fails these tests, it never skips them.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import validate_deploy as vd  # noqa: E402

from thyme.cli import build_parser  # noqa: E402

DOCS = REPO / "docs" / "deploy.md"


def task_definition() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vd.render((vd.DEPLOY / "ecs" / "task-definition.json").read_text()))
    return data


def manifests() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((vd.DEPLOY / "k8s").glob("*.yaml"))}


# -- the validators are there, and everything passes them ----------------------------------------


def test_every_validator_is_installed() -> None:
    for name in ("hadolint", "parliament", "check-jsonschema"):
        assert Path(vd.tool(name)).is_file()
    importlib.import_module("kubernetes_validate")
    assert vd._ecs_shape("RegisterTaskDefinition").name == "RegisterTaskDefinitionRequest"


def test_every_deployment_file_validates() -> None:
    assert vd.validate_all() == []


def test_the_command_line_script_exits_zero() -> None:
    assert vd.main([]) == 0


def test_every_placeholder_has_an_example_and_is_documented() -> None:
    found = set().union(*(vd.placeholders(p.read_text()) for p in vd.DEPLOY.rglob("*") if p.is_file()))
    assert found == set(vd.EXAMPLE_VALUES)
    text = DOCS.read_text()
    assert sorted(name for name in found if f"`{name}`" not in text) == []


# -- Dockerfile ----------------------------------------------------------------------------------


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install amazon-kclpy\nADD . /app\nCMD thyme kinesis run\n")
    found = " ".join(vd.hadolint(bad))
    for rule in ("DL3007", "DL3013", "DL3020", "DL3025"):
        assert rule in found


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.replace("USER 10001:10001\n", ""), "non-root USER"),
        (lambda t: t.replace('"/usr/bin/tini", "--"', '"/usr/bin/tini", "-g", "--"'), "ENTRYPOINT must be"),
        (lambda t: t.replace("install-jars --into", "mvn-resolve --into"), "thyme kinesis install-jars"),
        (lambda t: t + "ENV AWS_SECRET_ACCESS_KEY=abc\n", "looks like a credential"),
        (lambda t: t + "ENV THYME_STORE_URL=postgresql://u:pw@db/thyme\n", "URL with a password"),
    ],
)
def test_the_dockerfile_contract_rejects(change: Any, expected: str) -> None:
    text = vd.DOCKERFILE.read_text()
    assert vd.dockerfile_contract(text) == []
    assert expected in " ".join(vd.dockerfile_contract(change(text)))


def test_the_image_is_built_by_the_steps_ci_runs() -> None:
    """No Docker engine here: CI proves the image's build steps (pip install, then install-jars)
    in the package test, which the test command runs."""
    assert "scripts/test" in (REPO / ".ci" / "run").read_text()
    package_test = (REPO / "tests" / "e2e" / "test_package_e2e.py").read_text()
    for step in ('"pip", "install"', '"install-jars", "--into"', '"--verify"', '"THYME_KCL_AUTO_INSTALL": "0"'):
        assert step in package_test
    text = vd.DOCKERFILE.read_text()
    assert 'pip install --no-cache-dir ".[postgres]"' in text and "thyme kinesis install-jars --into" in text
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for item in source.split():
            if "$" in item:
                continue
            assert (REPO / item).exists(), item
            assert item.rstrip("/") not in ignored, f"{item} is copied but .dockerignore drops it"
    # The runtime finds what the build stage made, through the launcher's own variables.
    from thyme.kinesis import launcher

    env = dict(re.findall(r"(THYME_\w+)=(\S+)", text))
    assert env[launcher.ENV_CLASSPATH] == "/opt/kcl/lib"
    assert "COPY --from=build /opt/kcl/lib /opt/kcl/lib" in text
    assert env[launcher.ENV_AUTO_INSTALL] == "0"  # the image never downloads jars at run time
    assert launcher.ENV_LOGBACK not in env  # the daemon's logging configuration ships in the package


# -- IAM -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"Effect": "Allow", "Action": "kinesis:GetRecord", "Resource": "*"}, "Unknown action"),
        (
            {
                "Effect": "Allow",
                "Action": "dynamodb:TransactWriteItems",
                "Resource": "arn:aws:dynamodb:us-east-1:444455556666:table/t",
            },
            "Unknown action",
        ),
        (
            {
                "Effect": "Allow",
                "Action": "kinesis:GetRecords",
                "Resource": "arn:aws:dynamodb:us-east-1:444455556666:table/t",
            },
            "RESOURCE_MISMATCH",
        ),
        (
            {
                "Effect": "Allow",
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",
                "Condition": {"StringEquals": {"cloudwatch:namespaces": "x"}},
            },
            "UNKNOWN_CONDITION",
        ),
        (
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::4444:role/x"}, "Action": "sts:AssumeRole"},
            "UNKNOWN_PRINCIPAL",
        ),
        (
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::444455556666:role/x"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalID2": "x"}},
            },
            "UNKNOWN_CONDITION",
        ),
    ],
)
def test_parliament_rejects_a_broken_policy(tmp_path: Path, policy: dict[str, Any], expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": [policy]}))
    found = " ".join(vd.iam_policy(path))
    assert expected in found, found


def test_the_policies_are_least_privilege() -> None:
    same = vd.load_policy("consumer-policy.json")
    cross = vd.load_policy("consumer-cross-account-policy.json")
    role = vd.load_policy("stream-role-policy.json")
    for policy in (same, cross, role, vd.load_policy("keda-scaler-policy.json")):
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow"
            assert all("*" not in action for action in vd._listed(statement["Action"]))
            if statement["Resource"] == "*":  # only what IAM cannot scope, and then by condition
                assert statement["Action"] == "cloudwatch:PutMetricData"
                assert statement["Condition"] == {
                    "StringEquals": {"cloudwatch:namespace": vd.EXAMPLE_VALUES["APPLICATION_NAME"]}
                }
    # The cross-account consumer is the same-account one with the stream swapped for one role.
    kinesis = [s for s in same["Statement"] if s["Sid"] == "ReadTheStream"]
    assert role["Statement"] == kinesis
    assume = [s for s in cross["Statement"] if s["Sid"] == "AssumeTheStreamAccountRole"]
    assert [s for s in cross["Statement"] if s not in assume] == [s for s in same["Statement"] if s not in kinesis]
    assert assume[0]["Action"] == "sts:AssumeRole"
    assert assume[0]["Resource"] == "arn:aws:iam::111122223333:role/thyme-kinesis-stream-reader"
    assert granted(cross) & {"kinesis:getrecords", "kinesis:getsharditerator"} == set()
    # Every table statement names this application's tables, never all tables.
    for statement in same["Statement"]:
        for resource in vd._listed(statement["Resource"]):
            if ":dynamodb:" in resource:
                assert ":table/thyme-ClickEvent-click-events" in resource


def granted(policy: dict[str, Any]) -> set[str]:
    return {a.lower() for a in vd.granted_actions(policy)}


def test_the_trust_policies_trust_one_role() -> None:
    plain = vd.load_policy("stream-role-trust-policy.json")
    with_id = vd.load_policy("stream-role-trust-policy-external-id.json")
    (statement,) = plain["Statement"]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::444455556666:role/thyme-kinesis-consumer"}
    (guarded,) = with_id["Statement"]
    assert guarded["Condition"] == {"StringEquals": {"sts:ExternalId": "example-external-id"}}
    assert {k: v for k, v in guarded.items() if k != "Condition"} == statement


def test_policy_evaluation() -> None:
    policy = vd.load_policy("consumer-policy.json")
    table = "arn:aws:dynamodb:us-east-1:444455556666:table/thyme-ClickEvent-click-events"
    assert vd.allows(policy, "dynamodb:GetItem", table)
    assert vd.allows(policy, "DynamoDB:getitem", table)
    assert vd.allows(policy, "dynamodb:Query", table + "/index/LeaseOwnerToLeaseKeyIndex")
    assert not vd.allows(policy, "dynamodb:Query", table)
    assert not vd.allows(policy, "dynamodb:GetItem", table + "-other")
    assert not vd.allows(policy, "dynamodb:DeleteTable", table)
    assert not vd.allows(policy, "cloudwatch:PutMetricData", "*")  # only under its namespace condition
    denied = copy.deepcopy(policy)
    denied["Statement"].append({"Effect": "Deny", "Action": "dynamodb:*", "Resource": "*"})
    assert not vd.allows(denied, "dynamodb:GetItem", table)


# -- ECS -----------------------------------------------------------------------------------------


def _container(data: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = data["containerDefinitions"][0]
    return container


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("family"), 'Missing required parameter in input: "family"'),
        (
            lambda d: _container(d).update(stopTimeout="120"),
            "Invalid type for parameter containerDefinitions[0].stopTimeout",
        ),
        (
            lambda d: _container(d).update(linuxParameters={"initProcessEnable": True}),
            'Unknown parameter in containerDefinitions[0].linuxParameters: "initProcessEnable"',
        ),
        (
            lambda d: _container(d)["healthCheck"].pop("command"),
            'Missing required parameter in containerDefinitions[0].healthCheck: "command"',
        ),
        (lambda d: _container(d).update(stopTimeout=300), "outside Fargate's 2-120 s"),
        (lambda d: _container(d).update(stopTimeout=60), "must exceed the shutdown grace 90 s"),
        (lambda d: d.update(memory="1000"), "Fargate has no cpu 1024 with memory 1000"),
        (lambda d: d.update(memory="1024"), "--memory-budget 1792MiB exceeds the memory limit 1024MiB"),
        (lambda d: _container(d).update(command=["app:Dataset"]), "--memory-budget SIZE --max-shards N"),
        (lambda d: _container(d)["healthCheck"].update(interval=1), "healthCheck.interval 1 outside 5-300"),
        (
            lambda d: _container(d)["environment"].append(
                {"name": "THYME_STORE_URL", "value": "postgresql://u:pw@db/t"}
            ),
            "looks like a credential",
        ),
        (
            lambda d: _container(d)["logConfiguration"]["options"].pop("awslogs-stream-prefix"),
            "awslogs options missing",
        ),
        (lambda d: _container(d).pop("mountPoints"), "writable /tmp"),
    ],
)
def test_the_task_definition_validator_rejects(change: Any, expected: str) -> None:
    data = task_definition()
    assert vd.ecs_task_definition(data) == []
    change(data)
    found = " ".join(vd.ecs_task_definition(data))
    assert expected in found, found


def test_the_service_validator_rejects() -> None:
    data = json.loads(vd.render((vd.DEPLOY / "ecs" / "service.json").read_text()))
    assert vd.ecs_service(data) == []
    assert "Invalid type for parameter desiredCount" in " ".join(vd.ecs_service({**data, "desiredCount": "two"}))
    assert 'Unknown parameter in input: "stopTimeout"' in " ".join(vd.ecs_service({**data, "stopTimeout": 120}))
    rolling = {**data, "deploymentConfiguration": {"minimumHealthyPercent": 50, "maximumPercent": 100}}
    assert "minimumHealthyPercent" in " ".join(vd.ecs_service(rolling))


def test_the_container_command_is_one_the_cli_accepts() -> None:
    """The task's command and the pod's args are ``thyme kinesis run`` arguments (after the
    image's ENTRYPOINT); a misspelt option would make every task exit at start."""
    (k8s,) = vd.load_yaml(vd.render(manifests()["deployment.yaml"]))
    for argv in (_container(task_definition())["command"], k8s["spec"]["template"]["spec"]["containers"][0]["args"]):
        args = build_parser().parse_args(["kinesis", "run", *argv])
        assert args.shutdown_grace_ms == 90_000
        assert args.dataset == vd.EXAMPLE_VALUES["DATASET"]


def test_the_thyme_variables_are_ones_the_code_reads() -> None:
    source = "".join(p.read_text() for folder in ("thyme", "record_processor") for p in (REPO / folder).rglob("*.py"))
    names = {e["name"] for e in _container(task_definition())["environment"] + _container(task_definition())["secrets"]}
    names |= set(re.findall(r"name: (THYME_\w+)", manifests()["deployment.yaml"]))
    thyme = {n for n in names if n.startswith("THYME_")}
    assert thyme >= {"THYME_STORE_URL"}
    assert sorted(n for n in thyme if f'"{n}"' not in source) == []


# -- Kubernetes ----------------------------------------------------------------------------------


def _broken(tmp_path: Path, name: str, old: str, new: str) -> list[str]:
    folder = tmp_path / "k8s"
    folder.mkdir()
    for file, original in manifests().items():
        text = original
        if file == name:
            assert old in text, old
            text = text.replace(old, new)
        (folder / file).write_text(text)
    return vd.k8s_manifests(folder)


@pytest.mark.parametrize(
    ("name", "old", "new", "expected"),
    [
        (
            "deployment.yaml",
            "  revisionHistoryLimit: 5",
            "  revisionHistoryLimit: five",
            "'five' is not of type 'integer'",
        ),
        (
            "deployment.yaml",
            "terminationGracePeriodSeconds:",
            "terminationGracePeriod:",
            "'terminationGracePeriod' was unexpected",
        ),
        (
            "deployment.yaml",
            "terminationGracePeriodSeconds: 120",
            "terminationGracePeriodSeconds: 60",
            "must exceed the shutdown grace 90 s",
        ),
        ("deployment.yaml", "memory: 1280Mi", "memory: 1024Mi", "memory request 1024Mi < --memory-budget 1280MiB"),
        ("deployment.yaml", '"1280MiB"', '"2GiB"', "--memory-budget 2048MiB exceeds the memory limit 1536MiB"),
        ("deployment.yaml", '"1280MiB"', '"256MiB"', "--memory-budget: too small for 4 shards"),
        ("deployment.yaml", '"--max-shards", "4", ', "", "must size the host: --memory-budget SIZE --max-shards N"),
        (
            "deployment.yaml",
            "          env:\n",
            "          env:\n            - name: THYME_JAVA_OPTS\n              value: -Xmx1g\n",
            "-Xmx in THYME_JAVA_OPTS overrides the heap --memory-budget gives the JVM",
        ),
        (
            "deployment.yaml",
            "  revisionHistoryLimit: 5",
            "  replicas: 2\n  revisionHistoryLimit: 5",
            "leave replicas to KEDA",
        ),
        ("serviceaccount.yaml", "    eks.amazonaws.com/role-arn:", "    role-arn:", "IRSA annotation"),
        ("keda-scaledobject.yaml", 'shardCount: "3"', "shardCount: 3", "shardCount must be a string"),
        (
            "keda-scaledobject.yaml",
            'shardCount: "3"',
            'shardCount: "5"',
            "shardCount 5 above the Deployment's --max-shards 4",
        ),
        ("keda-scaledobject.yaml", "maxReplicaCount: 8", 'maxReplicaCount: "8"', "maxReplicaCount must be an integer"),
        ("keda-scaledobject.yaml", "minReplicaCount: 2", "minReplicaCount: 0", "minReplicaCount >= 1"),
        ("keda-triggerauthentication.yaml", "provider: aws", "provider: aws-eks", "provider must be aws"),
        # caught only by KEDA's own CRD schema (tests/schemas/keda): a field KEDA does not have
        ("keda-scaledobject.yaml", "minReplicaCount: 2", "minReplicas: 2", "check-jsonschema"),
    ],
)
def test_the_manifest_validator_rejects(tmp_path: Path, name: str, old: str, new: str, expected: str) -> None:
    found = " ".join(_broken(tmp_path, name, old, new)).replace("trigger metadata ", "")
    assert expected in found, found


def test_the_memory_sizing_covers_the_measured_figures() -> None:
    budget = vd.MemoryBudget.from_deployment()
    plan = budget.plan()
    # Measured (README, Performance): a child peaks at 76 MiB with 10,000 records of 200 B and
    # 95 MiB with a full 10 MiB batch; the JVM is measured by tests/e2e/test_iam_calls.py
    # against this same plan, the whole tree by benchmarks/catchup.py.
    assert plan.child_mib() >= 100
    assert plan.expected_peak_mib() <= budget.total_mib
    assert budget.shards_per_pod == 4
    assert vd.quantity_mib("1Gi") == 1024


# -- alarms and alerts ---------------------------------------------------------------------------


def alerts() -> tuple[dict[str, Any], dict[str, Any]]:
    cloudwatch = json.loads(vd.render((vd.DEPLOY / "alerts" / "cloudwatch.json").read_text()))
    rules = vd.yaml.safe_load((vd.DEPLOY / "alerts" / "prometheus-rules.yaml").read_text())
    return cloudwatch, rules


def test_the_alarms_and_rules_cover_leader_lag_and_dead_letters() -> None:
    cloudwatch, rules = alerts()
    assert vd.cloudwatch_alerts(cloudwatch) == []
    assert vd.prometheus_rules(rules) == []
    read = {a.get("MetricName") or a["Metrics"][0]["MetricStat"]["Metric"]["MetricName"] for a in cloudwatch["Alarms"]}
    assert read == {"LeaderLockStale", "MillisBehindLatest", "RecordsInvalid"}
    assert {r["alert"] for r in rules["groups"][0]["rules"]} >= {
        "ThymeKinesisLeaderLockStale",
        "ThymeKinesisShardBehind",
        "ThymeKinesisDeadLettersRising",
    }


def test_the_alert_validators_reject_broken_definitions() -> None:
    cloudwatch, rules = alerts()
    broken = copy.deepcopy(cloudwatch)
    broken["Alarms"][1]["MetricName"] = "MillisBehind"
    broken["Alarms"][0]["ComparisonOperator"] = "MoreThan"
    broken["MetricFilters"][0]["filterPattern"] = '{ $.event = "leader_gone" }'
    found = "\n".join(vd.cloudwatch_alerts(broken))
    assert "metric 'MillisBehind' is neither emitted by the children nor made by a filter" in found
    assert "ComparisonOperator" in found
    assert "matches \"event\" 'leader_gone', which the code never logs" in found
    bad = copy.deepcopy(rules)
    bad["groups"][0]["rules"][0]["expr"] = "max(thyme_leader_age_seconds) > 1"
    bad["groups"][0]["rules"][1]["for"] = "ten minutes"
    del bad["groups"][0]["rules"][2]["annotations"]
    found = "\n".join(vd.prometheus_rules(bad))
    assert "metric thyme_leader_age_seconds is not one the exporter serves" in found
    assert "'for' is not a Prometheus duration: 'ten minutes'" in found
    assert "ThymeKinesisDeadLettersRising: no annotations.summary" in found
