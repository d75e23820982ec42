#!/usr/bin/env python3
"""Validate the deployment files offline, with tools that know the real schemas.

    .venv/bin/python scripts/validate_deploy.py   # everything in deploy/ + the Dockerfile

What runs (a missing tool is an error, never a skip):

* ``Dockerfile``: hadolint (every finding fails), and the contract the image keeps: built by
  the scripts CI runs, non-root, ``tini`` without ``-g`` in front of ``thyme kinesis run``,
  nothing that looks like a credential.
* ``deploy/iam/*.json``: parliament (unknown actions, action/resource mismatches, malformed
  ARNs, unknown condition keys). A trust policy has no ``Resource``: it is linted as the
  resource policy of the role it is attached to.
* ``deploy/ecs/*.json``: botocore's own ECS service model (``RegisterTaskDefinition`` and
  ``CreateService`` input shapes), plus the limits the model does not encode (Fargate
  ``stopTimeout`` 2-120 s and at least the daemon's grace period, health-check bounds,
  Fargate cpu/memory pairs, awslogs options, no credentials in ``environment``).
* ``deploy/alerts/cloudwatch.json``: botocore's CloudWatch and CloudWatch Logs models
  (``PutMetricAlarm``, ``PutMetricFilter``), plus: every metric an alarm reads is one the
  children emit (EMF, ``record_processor/metrics.py``) or a metric filter here makes, and every
  ``$.event`` a filter matches is one the code logs.
* ``deploy/alerts/prometheus-rules.yaml``: the rules file's structure and durations, and every
  ``thyme_*`` metric an expression names is one the launcher's exporter serves.
* ``deploy/k8s/*.yaml``: kubernetes-validate's strict OpenAPI schemas for the core objects
  (several Kubernetes versions); KEDA objects by rule here, and by KEDA's CRD schemas
  (``tests/schemas/keda``) with check-jsonschema. Across files: the grace period, the
  memory sizing (``--memory-budget`` and ``--max-shards`` in the command: a budget that works
  for its shards, within the memory limit and the request, no ``-Xmx`` overriding it),
  ``shardCount`` at most ``--max-shards``. The ECS task's command is sized the same way.

Every file holds ``${PLACEHOLDER}`` values a user substitutes (``envsubst``); they are
rendered with ``EXAMPLE_VALUES`` first, and a placeholder without an example is an error.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from thyme.errors import ConfigError
from thyme.kinesis import budget as memory_budget

yaml: Any = importlib.import_module("yaml")  # PyYAML (no type stubs installed)

REPO: Final = Path(__file__).resolve().parents[1]
DEPLOY: Final = REPO / "deploy"
KEDA_SCHEMAS: Final = REPO / "tests" / "schemas" / "keda"
"""KEDA's CRD schemas as JSON Schema (Apache-2.0 data, see its README), always checked."""
DOCKERFILE: Final = REPO / "Dockerfile"
KUBERNETES_VERSIONS: Final = ("1.30.0", "1.37.0")

EXAMPLE_VALUES: Final[dict[str, str]] = {
    "AWS_REGION": "us-east-1",
    "ACCOUNT_ID": "444455556666",
    "STREAM_ACCOUNT_ID": "111122223333",
    "STREAM_NAME": "click-events",
    "APPLICATION_NAME": "thyme-ClickEvent-click-events",
    "CONSUMER_ROLE_NAME": "thyme-kinesis-consumer",
    "EXECUTION_ROLE_NAME": "thyme-kinesis-execution",
    "STREAM_ROLE_NAME": "thyme-kinesis-stream-reader",
    "EXTERNAL_ID": "example-external-id",
    "KEDA_OPERATOR_ROLE_NAME": "keda-operator",
    "KEDA_SCALER_ROLE_NAME": "thyme-kinesis-keda-scaler",
    "STORE_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:444455556666:secret:thyme/store-url-AbCdEf",
    "DATASET_NAME": "ClickEvent",
    "IMAGE": "444455556666.dkr.ecr.us-east-1.amazonaws.com/thyme-kinesis:1.0.0",
    "DATASET": "/app/app.py:ClickEvent",
    "ECS_CLUSTER": "thyme",
    "SUBNET_ID_A": "subnet-0123456789abcdef0",
    "SUBNET_ID_B": "subnet-0fedcba9876543210",
    "SECURITY_GROUP_ID": "sg-0123456789abcdef0",
}

CONDITIONAL_ACTIONS: Final[dict[str, str]] = {
    "kinesis:DescribeStreamSummary": "listed by AWS's KCL IAM page; KCL 3.1.3 in polling mode did not call it",
    "cloudwatch:PutMetricData": "not exercised locally: metricsLevel = NONE there (no CloudWatch endpoint key)",
}
"""Granted actions that a short local run may not use, and why they stay."""

FARGATE_MEMORY_MIB: Final[dict[str, range]] = {
    "256": range(512, 2049, 512),
    "512": range(1024, 4097, 1024),
    "1024": range(2048, 8193, 1024),
    "2048": range(4096, 16385, 1024),
    "4096": range(8192, 30721, 1024),
    "8192": range(16384, 61441, 4096),
    "16384": range(32768, 122881, 8192),
}
_SECRET_NAME: Final = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)
_URL_WITH_PASSWORD: Final = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
_PLACEHOLDER: Final = re.compile(r"\$\{([A-Z0-9_]+)\}")
_MIB: Final = {"Mi": 1, "Gi": 1024}


# -- rendering and IAM evaluation (also used by the tests) --------------------------------------


def placeholders(text: str) -> set[str]:
    """The ``${NAME}`` placeholders in ``text``."""
    return set(_PLACEHOLDER.findall(text))


def render(text: str, values: dict[str, str] | None = None) -> str:
    """Substitute every ``${NAME}``, as ``envsubst`` does (a ``$`` not followed by ``{NAME}``, such
    as a CloudWatch Logs filter's ``$.event``, stays); a placeholder without a value raises ``KeyError``."""
    known = values or EXAMPLE_VALUES
    return _PLACEHOLDER.sub(lambda m: known[m.group(1)], text)


def load_policy(name: str, values: dict[str, str] | None = None) -> dict[str, Any]:
    """``deploy/iam/<name>``, rendered and parsed."""
    data: dict[str, Any] = json.loads(render((DEPLOY / "iam" / name).read_text(), values))
    return data


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allows(policy: dict[str, Any], action: str, resource: str) -> bool:
    """Whether ``policy`` allows ``action`` on ``resource`` with no request context: an
    explicit Deny wins, and a statement with a ``Condition`` never matches (conservative)."""

    def matches(statement: dict[str, Any]) -> bool:
        actions = [str(a).lower() for a in _listed(statement.get("Action", []))]
        resources = [str(r) for r in _listed(statement.get("Resource", []))]
        return any(fnmatch.fnmatchcase(action.lower(), a) for a in actions) and any(
            fnmatch.fnmatchcase(resource, r) for r in resources
        )

    statements = [s for s in _listed(policy["Statement"]) if matches(s)]
    if any(s["Effect"] == "Deny" for s in statements):
        return False
    return any(s["Effect"] == "Allow" and "Condition" not in s for s in statements)


def granted_actions(policy: dict[str, Any]) -> set[str]:
    return {str(a) for s in _listed(policy["Statement"]) if s["Effect"] == "Allow" for a in _listed(s["Action"])}


# -- tools ---------------------------------------------------------------------------------------


class ToolMissingError(RuntimeError):
    """A validator is not installed: a failure, not a reason to skip."""


def tool(name: str) -> str:
    """The path of a console script: next to this Python first (the venv), then on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ToolMissingError(f"{name} is not installed: .venv/bin/pip install -e '.[dev]' (see pyproject.toml)")
    return found


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=120)


# -- Dockerfile ----------------------------------------------------------------------------------


def hadolint(path: Path) -> list[str]:
    """hadolint's findings (all severities fail)."""
    result = _run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(path)])
    if result.returncode == 0:
        return []
    return [f"hadolint: {line}" for line in (result.stdout + result.stderr).strip().splitlines()] or [
        f"hadolint exited {result.returncode}"
    ]


def dockerfile_contract(text: str) -> list[str]:
    """What the image promises beyond lint: CI-proven build steps, non-root, signals, no secrets."""
    problems: list[str] = []
    joined = re.sub(r"\\\n", " ", text)
    instructions = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    runs = " ".join(i for i in instructions if i.upper().startswith("RUN "))
    if not re.search(r"thyme kinesis install-jars --into \S+", runs):
        problems.append(
            "Dockerfile: the KCL classpath must be fetched by thyme kinesis install-jars (the pinned set, the path "
            "CI proves in tests/e2e/test_package_e2e.py)"
        )
    if not re.search(r"pip install[^&;]*\"?\.\[", runs):
        problems.append(
            "Dockerfile: the package must be installed with pip install '.[...]' (as scripts/setup.sh does)"
        )
    froms = [i for i in instructions if i.upper().startswith("FROM ")]
    if len(froms) < 2:
        problems.append("Dockerfile: multi-stage build expected (a build stage and a runtime stage)")
    users = [i.split(None, 1)[1] for i in instructions if i.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("Dockerfile: the runtime stage must end as a non-root USER")
    entry = [i for i in instructions if i.upper().startswith("ENTRYPOINT ")]
    if not entry:
        problems.append("Dockerfile: no ENTRYPOINT")
    else:
        argv = json.loads(entry[-1].split(None, 1)[1])
        if argv[:2] != ["/usr/bin/tini", "--"] or argv[2:] != ["thyme", "kinesis", "run"]:
            problems.append(f"Dockerfile: ENTRYPOINT must be tini -- thyme kinesis run, not {argv}")
        if "-g" in argv:
            problems.append("Dockerfile: tini -g would signal the shard children directly (no graceful shutdown)")
    for instruction in instructions:
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split()[0]]
            problems += [f"Dockerfile: {keyword} {n} looks like a credential" for n in names if _SECRET_NAME.search(n)]
            if _URL_WITH_PASSWORD.search(rest):
                problems.append(f"Dockerfile: {keyword} holds a URL with a password")
    return problems


# -- IAM -----------------------------------------------------------------------------------------


def parliament(policy: dict[str, Any], label: str) -> list[str]:
    """parliament's findings for one identity or resource policy (piped on stdin)."""
    result = _run([tool("parliament"), "--json"], stdin=json.dumps(policy, indent=2))
    findings = [json.loads(line) for line in result.stdout.splitlines() if line.strip().startswith("{")]
    problems = [f"{label}: parliament {f.get('issue')}: {f.get('title')} {f.get('detail')}" for f in findings]
    if result.returncode != 0 and not problems:
        problems.append(f"{label}: parliament exited {result.returncode}: {result.stderr.strip()[-500:]}")
    return problems


def iam_policy(path: Path, values: dict[str, str] | None = None) -> list[str]:
    """Lint one policy file; a trust policy is linted on the role it trusts for."""
    label = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    try:
        policy = json.loads(render(path.read_text(), values))
    except (KeyError, ValueError) as exc:
        return [f"{label}: cannot render: {type(exc).__name__}: {exc}"]
    problems: list[str] = []
    statements = _listed(policy.get("Statement", []))
    if policy.get("Version") != "2012-10-17":
        problems.append(f"{label}: Version must be 2012-10-17")
    if any("Principal" in s for s in statements):
        for statement in statements:
            if "Resource" in statement or "NotResource" in statement:
                problems.append(f"{label}: a trust policy has no Resource")
            if _listed(statement.get("Action")) != ["sts:AssumeRole"]:
                problems.append(f"{label}: a trust policy here grants sts:AssumeRole only")
            statement["Resource"] = "arn:aws:iam::123456789012:role/the-role-this-trust-policy-is-attached-to"
    return problems + parliament(policy, label)


# -- ECS -----------------------------------------------------------------------------------------


def _ecs_shape(operation: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("ecs").operation_model(operation).input_shape


def _botocore(params: dict[str, Any], operation: str, label: str) -> list[str]:
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(params, _ecs_shape(operation))
    return [f"{label}: {line}" for line in report.generate_report().splitlines()] if report.has_errors() else []


def grace_seconds(argv: Iterable[str]) -> float:
    """The daemon's ``--shutdown-grace-ms`` in a command line (the CLI default when absent)."""
    args = list(argv)
    value = args[args.index("--shutdown-grace-ms") + 1] if "--shutdown-grace-ms" in args else "30000"
    return int(value) / 1000


def ecs_task_definition(data: dict[str, Any], label: str = "task-definition.json") -> list[str]:
    problems = _botocore(data, "RegisterTaskDefinition", label)
    if problems:
        return problems
    fargate = "FARGATE" in data.get("requiresCompatibilities", [])
    if fargate:
        cpu, memory = str(data.get("cpu")), int(str(data.get("memory", "0")))
        if memory not in FARGATE_MEMORY_MIB.get(cpu, range(0)):
            problems.append(f"{label}: Fargate has no cpu {cpu} with memory {memory}")
        if data.get("networkMode") != "awsvpc":
            problems.append(f"{label}: Fargate needs networkMode awsvpc")
    if not data.get("taskRoleArn"):
        problems.append(f"{label}: taskRoleArn (the consumer's identity) is required")
    for container in data["containerDefinitions"]:
        name = f"{label}: container {container['name']}"
        stop = container.get("stopTimeout", 30)
        if fargate and not 2 <= stop <= 120:
            problems.append(f"{name}: stopTimeout {stop} is outside Fargate's 2-120 s")
        grace = grace_seconds(container.get("command", []))
        limit = container.get("memory") or int(str(data.get("memory", "0")))
        problems += budget_rules(container.get("command", []), container.get("environment", []), limit, name)[0]
        if stop < grace + 10:
            problems.append(f"{name}: stopTimeout {stop} s must exceed the shutdown grace {grace:g} s by 10 s")
        check = container.get("healthCheck")
        if check:
            for key, low, high in (
                ("interval", 5, 300),
                ("timeout", 2, 60),
                ("retries", 1, 10),
                ("startPeriod", 0, 300),
            ):
                if key in check and not low <= check[key] <= high:
                    problems.append(f"{name}: healthCheck.{key} {check[key]} outside {low}-{high}")
            if check["command"][0] not in ("CMD", "CMD-SHELL"):
                problems.append(f"{name}: healthCheck.command must start with CMD or CMD-SHELL")
        logs = container.get("logConfiguration", {})
        if logs.get("logDriver") != "awslogs":
            problems.append(f"{name}: logDriver awslogs expected")
        else:
            missing = {"awslogs-group", "awslogs-region", "awslogs-stream-prefix", "mode"} - set(
                logs.get("options", {})
            )
            if missing:
                problems.append(f"{name}: awslogs options missing: {sorted(missing)}")
        for variable in container.get("environment", []):
            if _SECRET_NAME.search(variable["name"]) or _URL_WITH_PASSWORD.search(variable.get("value", "")):
                problems.append(f"{name}: environment {variable['name']} looks like a credential: use secrets")
        if container.get("readonlyRootFilesystem"):
            mounted = {m["containerPath"] for m in container.get("mountPoints", [])}
            if "/tmp" not in mounted:  # noqa: S108 - a path in the container
                problems.append(f"{name}: a read-only root needs a writable /tmp (the JVM, the launcher)")
    return problems


def ecs_service(data: dict[str, Any], label: str = "service.json") -> list[str]:
    problems = _botocore(data, "CreateService", label)
    deployment = data.get("deploymentConfiguration", {})
    if deployment.get("minimumHealthyPercent", 100) < 100:
        problems.append(f"{label}: minimumHealthyPercent < 100 stops workers before new ones hold leases")
    return problems


def ecs_health_command() -> str:
    """The task definition's health-check shell command (the e2e test runs it)."""
    data = json.loads(render((DEPLOY / "ecs" / "task-definition.json").read_text()))
    command: list[str] = data["containerDefinitions"][0]["healthCheck"]["command"]
    assert command[0] == "CMD-SHELL"
    return command[1]


# -- Kubernetes ----------------------------------------------------------------------------------


def load_yaml(text: str) -> list[dict[str, Any]]:
    """The documents of a YAML stream (empty ones dropped)."""
    return [d for d in yaml.safe_load_all(text) if d]


def k8s_documents(path: Path, values: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return load_yaml(render(path.read_text(), values))


def kubernetes_schema(doc: dict[str, Any], label: str) -> list[str]:
    """Strict OpenAPI validation of a core object, at each version in ``KUBERNETES_VERSIONS``."""
    validator: Any = importlib.import_module("kubernetes_validate")
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            validator.validate(doc, version, strict=True)
        except validator.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problems.append(f"{label} ({doc.get('kind')}, k8s {version}): {where}: {exc.message}")
        except validator.SchemaNotFoundError as exc:
            problems.append(f"{label}: no Kubernetes schema: {exc}")
    return problems


def quantity_mib(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", value).groups()  # type: ignore[union-attr]
    return float(number) * _MIB[unit]


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


@dataclass(frozen=True)
class MemoryBudget:
    """Per pod or task: the container's ``--memory-budget`` and ``--max-shards``, which
    ``thyme kinesis run`` turns into the daemon's settings (``thyme/kinesis/budget.py``)."""

    budget_mib: float
    shards_per_pod: int
    record_size: int

    @property
    def total_mib(self) -> float:
        return self.budget_mib

    def plan(self, store: memory_budget.Store = "postgresql") -> memory_budget.MemoryPlan:
        """What ``run`` makes of this sizing: by default for PostgreSQL, the store several pods or
        tasks share (``THYME_STORE_URL``, from a secret)."""
        return memory_budget.plan(int(self.budget_mib * 1024 * 1024), self.shards_per_pod, self.record_size, store)

    @classmethod
    def from_args(cls, argv: Iterable[str], label: str) -> MemoryBudget:
        args = [str(arg) for arg in argv]
        size, shards = _option(args, "--memory-budget"), _option(args, "--max-shards")
        if size is None or shards is None or not shards.isdigit():
            msg = f"{label}: the command must size the host: --memory-budget SIZE --max-shards N"
            raise ValueError(msg)
        record = _option(args, "--record-size")
        return cls(
            memory_budget.parse_size(size, "--memory-budget") / (1024 * 1024),
            int(shards),
            memory_budget.parse_size(record, "--record-size") if record else memory_budget.DEFAULT_RECORD_SIZE,
        )

    @classmethod
    def from_deployment(cls, path: Path | None = None) -> MemoryBudget:
        (deployment,) = k8s_documents(path or DEPLOY / "k8s" / "deployment.yaml")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        return cls.from_args(container.get("args", []), "deployment.yaml")


def budget_rules(
    argv: Iterable[str], env: Iterable[dict[str, Any]], limit_mib: float, label: str
) -> tuple[list[str], MemoryBudget | None]:
    """The sizing of one container: its budget works for its shards, fits its memory limit, and
    no -Xmx in THYME_JAVA_OPTS overrides the heap the budget gives the JVM. Returns the problems
    and the sizing (None when it cannot be read)."""
    try:
        budget = MemoryBudget.from_args(argv, label)
    except (ValueError, ConfigError) as exc:
        return [str(exc) if isinstance(exc, ValueError) else f"{label}: {exc}"], None
    try:
        budget.plan()
    except ConfigError as exc:
        return [f"{label}: {exc}"], budget
    problems = []
    if budget.budget_mib > limit_mib:
        problems.append(f"{label}: --memory-budget {budget.budget_mib:g}MiB exceeds the memory limit {limit_mib:g}MiB")
    opts = " ".join(str(e.get("value", "")) for e in env if e.get("name") == "THYME_JAVA_OPTS")
    if "-Xmx" in opts:
        problems.append(f"{label}: -Xmx in THYME_JAVA_OPTS overrides the heap --memory-budget gives the JVM")
    return problems, budget


def keda_rules(doc: dict[str, Any], label: str) -> list[str]:
    """KEDA objects, by rule (its CRD schemas are not part of this repository)."""
    problems: list[str] = []
    spec = doc.get("spec", {})
    if doc.get("apiVersion") != "keda.sh/v1alpha1":
        problems.append(f"{label}: apiVersion keda.sh/v1alpha1 expected")
    if doc["kind"] == "ScaledObject":
        for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
            if key in spec and not isinstance(spec[key], int):
                problems.append(f"{label}: spec.{key} must be an integer")
        if spec.get("minReplicaCount", 0) < 1:
            problems.append(f"{label}: minReplicaCount >= 1: a stream always needs a consumer")
        for trigger in spec.get("triggers", []):
            if trigger.get("type") != "aws-kinesis-stream":
                problems.append(f"{label}: trigger type aws-kinesis-stream expected")
            metadata = trigger.get("metadata", {})
            problems += [
                f"{label}: trigger metadata {k} must be a string" for k, v in metadata.items() if not isinstance(v, str)
            ]
            problems += [
                f"{label}: trigger metadata {k} is required" for k in ("streamName", "awsRegion") if k not in metadata
            ]
            if not str(metadata.get("shardCount", "2")).isdigit() or int(metadata.get("shardCount", "2")) < 1:
                problems.append(f"{label}: shardCount must be a whole number >= 1 (replicas <= shards)")
            if "identityOwner" in metadata:
                problems.append(f"{label}: identityOwner in metadata is deprecated; use a TriggerAuthentication")
    elif doc["kind"] == "TriggerAuthentication":
        identity = spec.get("podIdentity", {})
        if identity.get("provider") != "aws":
            problems.append(f"{label}: podIdentity.provider must be aws (aws-eks is deprecated)")
        if identity.get("identityOwner") not in (None, "keda", "workload"):
            problems.append(f"{label}: identityOwner must be keda or workload")
        if "roleArn" in identity and identity.get("identityOwner") == "workload":
            problems.append(f"{label}: roleArn and identityOwner: workload are mutually exclusive")
    else:
        problems.append(f"{label}: unexpected KEDA kind {doc['kind']}")
    return problems


def keda_schema(doc: dict[str, Any], schema_dir: Path, label: str) -> list[str]:
    """check-jsonschema against KEDA's CRD schemas converted to JSON Schema."""
    schema = schema_dir / f"{doc['kind'].lower()}_v1alpha1.json"
    if not schema.is_file():
        return [f"{label}: no KEDA schema {schema}"]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(doc, handle)
    try:
        result = _run([tool("check-jsonschema"), "--schemafile", str(schema), handle.name])
    finally:
        os.unlink(handle.name)
    return [] if result.returncode == 0 else [f"{label}: check-jsonschema: {result.stdout.strip()}"]


def k8s_manifests(
    folder: Path, keda_schemas: Path | None = KEDA_SCHEMAS, values: dict[str, str] | None = None
) -> list[str]:
    problems: list[str] = []
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        label = path.name
        try:
            found = k8s_documents(path, values)
        except (KeyError, ValueError, yaml.YAMLError) as exc:
            problems.append(f"{label}: cannot render/parse: {type(exc).__name__}: {exc}")
            continue
        for doc in found:
            docs[doc["kind"]] = doc
            if str(doc.get("apiVersion", "")).startswith("keda.sh/"):
                problems += keda_rules(doc, label)
                if keda_schemas is not None:
                    problems += keda_schema(doc, keda_schemas, label)
            else:
                problems += kubernetes_schema(doc, label)
    if problems:
        return problems
    return problems + _k8s_consistency(docs)


def _k8s_consistency(docs: dict[str, dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    deployment = docs.get("Deployment")
    if deployment is None:
        return ["k8s: no Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    grace = grace_seconds(container.get("args", []))
    if pod.get("terminationGracePeriodSeconds", 30) < grace + 10:
        problems.append(
            f"deployment.yaml: terminationGracePeriodSeconds must exceed the shutdown grace {grace:g} s by 10 s"
        )
    if "replicas" in deployment["spec"] and "ScaledObject" in docs:
        problems.append("deployment.yaml: leave replicas to KEDA (an apply would fight the HPA)")
    requested = quantity_mib(container["resources"]["requests"]["memory"])
    limit = quantity_mib(container["resources"]["limits"]["memory"])
    args = container.get("args", [])
    sizing, budget = budget_rules(args, container.get("env", []), limit, "deployment.yaml")
    problems += sizing
    if budget is not None and requested < budget.total_mib:
        problems.append(f"deployment.yaml: memory request {requested:g}Mi < --memory-budget {budget.total_mib:g}MiB")
    if limit < requested:
        problems.append("deployment.yaml: memory limit below the request")
    context = container.get("securityContext", {})
    if not context.get("readOnlyRootFilesystem") or context.get("allowPrivilegeEscalation", True):
        problems.append("deployment.yaml: read-only root and no privilege escalation expected")
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        problems.append("deployment.yaml: runAsNonRoot expected")
    scaled = docs.get("ScaledObject")
    if scaled is not None:
        (trigger,) = scaled["spec"]["triggers"]
        count = int(trigger["metadata"].get("shardCount", "2"))
        if budget is not None and count > budget.shards_per_pod:
            problems.append(
                f"keda-scaledobject.yaml: shardCount {count} above the Deployment's --max-shards "
                f"{budget.shards_per_pod}: KEDA would run too few pods to hold every shard"
            )
        if scaled["spec"]["scaleTargetRef"]["name"] != deployment["metadata"]["name"]:
            problems.append("keda-scaledobject.yaml: scaleTargetRef must name the Deployment")
        auth = trigger.get("authenticationRef", {}).get("name")
        if "TriggerAuthentication" in docs and auth != docs["TriggerAuthentication"]["metadata"]["name"]:
            problems.append("keda-scaledobject.yaml: authenticationRef must name the TriggerAuthentication")
    account = docs.get("ServiceAccount")
    if account is None or "eks.amazonaws.com/role-arn" not in account["metadata"].get("annotations", {}):
        problems.append("serviceaccount.yaml: the IRSA annotation eks.amazonaws.com/role-arn is required")
    elif pod.get("serviceAccountName") != account["metadata"]["name"]:
        problems.append("deployment.yaml: serviceAccountName must be the annotated ServiceAccount")
    return problems


# -- everything ----------------------------------------------------------------------------------


def unknown_placeholders() -> list[str]:
    files = sorted(p for p in DEPLOY.rglob("*") if p.is_file())  # the Dockerfile's ${...} are ARGs
    return [
        f"{p.relative_to(REPO)}: placeholder ${{{name}}} has no example value"
        for p in files
        for name in sorted(placeholders(p.read_text()) - set(EXAMPLE_VALUES))
    ]


# -- alerts --------------------------------------------------------------------------------------


def _aws_shape(service: str, operation: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service).operation_model(operation).input_shape


def _shape_problems(params: dict[str, Any], service: str, operation: str, label: str) -> list[str]:
    from botocore.validate import ParamValidator

    shape = _aws_shape(service, operation)
    report = ParamValidator().validate(params, shape)
    problems = [f"{label}: {line}" for line in report.generate_report().splitlines()] if report.has_errors() else []
    return problems + [f"{label}: {p}" for p in _enum_problems(params, shape, "")]


def _enum_problems(value: Any, shape: Any, path: str) -> list[str]:
    """Values outside a string shape's enum (botocore's validator does not check them)."""
    if shape.type_name == "string" and getattr(shape, "enum", None) and isinstance(value, str):
        return [] if value in shape.enum else [f"{path or 'value'}: {value!r} is not one of {shape.enum}"]
    if shape.type_name == "structure" and isinstance(value, dict):
        return [
            problem
            for key, item in value.items()
            if key in shape.members
            for problem in _enum_problems(item, shape.members[key], f"{path}.{key}".lstrip("."))
        ]
    if shape.type_name == "list" and isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _enum_problems(item, shape.member, f"{path}[{i}]")]
    return []


def _logged_events() -> set[str]:
    """Every ``"event": "<name>"`` the package logs."""
    found: set[str] = set()
    for path in (REPO / "thyme").rglob("*.py"):
        found.update(re.findall(r'"event":\s*"([a-z_]+)"', path.read_text()))
    for path in (REPO / "record_processor").rglob("*.py"):
        found.update(re.findall(r'"event":\s*"([a-z_]+)"', path.read_text()))
    return found


def cloudwatch_alerts(data: dict[str, Any], label: str = "cloudwatch.json") -> list[str]:
    sys.path.insert(0, str(REPO))
    from record_processor.metrics import EMITTED

    problems: list[str] = []
    made: set[str] = set()
    events = _logged_events()
    for i, metric_filter in enumerate(data.get("MetricFilters", [])):
        where = f"{label}: MetricFilters[{i}]"
        problems += _shape_problems(metric_filter, "logs", "PutMetricFilter", where)
        made.update(t["metricName"] for t in metric_filter.get("metricTransformations", []))
        for event in re.findall(r'\$\.event\s*=\s*"([^"]+)"', metric_filter.get("filterPattern", "")):
            if event not in events:
                problems.append(f'{where}: the pattern matches "event" {event!r}, which the code never logs')
    alarms = data.get("Alarms", [])
    if not alarms:
        problems.append(f"{label}: no Alarms")
    for alarm in alarms:
        where = f"{label}: {alarm.get('AlarmName')}"
        problems += _shape_problems(alarm, "cloudwatch", "PutMetricAlarm", where)
        names = [alarm["MetricName"]] if "MetricName" in alarm else []
        names += [m["MetricStat"]["Metric"]["MetricName"] for m in alarm.get("Metrics", []) if "MetricStat" in m]
        for name in names:
            if name not in EMITTED and name not in made:
                problems.append(f"{where}: metric {name!r} is neither emitted by the children nor made by a filter")
    return problems


_DURATION: Final = re.compile(r"(?:\d+[smhdwy])+|0")


def prometheus_rules(data: dict[str, Any], label: str = "prometheus-rules.yaml") -> list[str]:
    sys.path.insert(0, str(REPO))
    from thyme.kinesis.prometheus import METRIC_NAMES

    problems: list[str] = []
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, list) or not groups:
        return [f"{label}: no groups"]
    for group in groups:
        if not isinstance(group, dict) or not isinstance(group.get("name"), str):
            problems.append(f"{label}: a group without a name")
            continue
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            problems.append(f"{label}: group {group['name']}: no rules")
            continue
        for rule in rules:
            name = rule.get("alert") if isinstance(rule, dict) else None
            where = f"{label}: {name}"
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                problems.append(f"{label}: a rule without a valid alert name: {rule!r}"[:200])
                continue
            unknown = set(rule) - {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            if unknown:
                problems.append(f"{where}: unknown keys {sorted(unknown)}")
            expr = rule.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where}: no expr")
                continue
            if expr.count("(") != expr.count(")") or expr.count("[") != expr.count("]"):
                problems.append(f"{where}: unbalanced brackets in expr")
            for metric in re.findall(r"\bthyme_[a-z_]+\b", expr):
                if metric not in METRIC_NAMES:
                    problems.append(f"{where}: metric {metric} is not one the exporter serves")
            if "for" in rule and not _DURATION.fullmatch(str(rule["for"])):
                problems.append(f"{where}: 'for' is not a Prometheus duration: {rule['for']!r}")
            annotations = rule.get("annotations")
            if not isinstance(annotations, dict) or not annotations.get("summary"):
                problems.append(f"{where}: no annotations.summary")
            if not isinstance(rule.get("labels"), dict) or "severity" not in rule["labels"]:
                problems.append(f"{where}: no labels.severity")
    return problems


def validate_all(keda_schemas: Path | None = KEDA_SCHEMAS) -> list[str]:
    """Every problem found in the Dockerfile and ``deploy/``; empty when all is well."""
    problems = unknown_placeholders()
    problems += hadolint(DOCKERFILE) + dockerfile_contract(DOCKERFILE.read_text())
    for path in sorted((DEPLOY / "iam").glob("*.json")):
        problems += iam_policy(path)
    ecs = DEPLOY / "ecs"
    problems += ecs_task_definition(json.loads(render((ecs / "task-definition.json").read_text())))
    problems += ecs_service(json.loads(render((ecs / "service.json").read_text())))
    problems += k8s_manifests(DEPLOY / "k8s", keda_schemas)
    alerts = DEPLOY / "alerts"
    problems += cloudwatch_alerts(json.loads(render((alerts / "cloudwatch.json").read_text())))
    problems += prometheus_rules(yaml.safe_load((alerts / "prometheus-rules.yaml").read_text()))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--keda-schemas",
        type=Path,
        default=KEDA_SCHEMAS,
        help=f"folder with KEDA's CRD JSON schemas (default {KEDA_SCHEMAS})",
    )
    args = parser.parse_args(argv)
    if args.keda_schemas is not None and not args.keda_schemas.is_dir():
        print(f"validate_deploy: no such folder: {args.keda_schemas}", file=sys.stderr)
        return 2
    try:
        problems = validate_all(args.keda_schemas)
    except ToolMissingError as exc:
        print(f"validate_deploy: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem, file=sys.stderr)
    done = f"KEDA schemas from {args.keda_schemas}"
    print(
        f"validate_deploy: {len(problems)} problem(s) ({done}): {shlex.join(sys.argv[1:]) or 'all files'}",
        file=sys.stderr,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
