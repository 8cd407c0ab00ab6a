"""deploy/ without a cluster: the instance config against Dagster's schemas, the Helm values against what the
Dagster chart and dagster-k8s expect, the step executor and GPU requests the code gives the training steps."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.job import UserDefinedDagsterK8sConfig

from hms_core.config import load_config
from hms_core.models.specs import MODEL_SPECS
from hms_dagster.definitions import build_definitions
from hms_dagster.deployment import GPU_RESOURCE, executor_config, gpu_step_config, torchrun_command
from hms_dagster.instance import TRAINING_POOL
from hms_dagster.resources import gpu_steps
from hms_dagster.stages import FOUNDATION_ENCODER, model_asset_key

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PG_ENV = {
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "pw",
    "DAGSTER_PG_HOST": "db",
    "DAGSTER_PG_DB": "d",
}


@pytest.fixture
def cluster_cfg():
    return load_config(DEPLOY / "hms-cluster.yaml")


def test_instance_yaml_validates_against_dagster_and_the_k8s_launcher(tmp_path, monkeypatch):
    for k, v in PG_ENV.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))  # Dagster's instance schema (raises on any bad key)
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, result.errors
    assert result.value["job_namespace"] == "hms"
    assert set(config["storage"]) == {"postgres"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.utils import pg_url_from_config

    storage = process_config(
        DagsterPostgresStorage.config_type(), config["storage"]["postgres"]
    )  # env vars resolved
    assert storage.success, storage.errors
    url = pg_url_from_config(storage.value)
    assert url.startswith("postgresql+psycopg2://dagster:pw@db:5432/d")


def test_cluster_config_runs_steps_as_pods_with_gpus_on_training(cluster_cfg):
    ops = cluster_cfg.operations
    assert (ops.executor, ops.instance_storage, ops.automation) == ("k8s", "postgres", "running")
    defs = build_definitions(cluster_cfg)
    graph = defs.resolve_asset_graph()
    torch_models = {
        model_asset_key(m) for m in cluster_cfg.enabled_models() if MODEL_SPECS[m].framework == "pytorch"
    }
    expected = torch_models | ({FOUNDATION_ENCODER} if cluster_cfg.foundation.enabled else set())
    assert expected and set(gpu_steps(list(defs.assets))) == expected
    for key in graph.get_all_asset_keys():  # every torch training step claims the gpu pool, nothing else does
        node = graph.get(key)
        in_pool = TRAINING_POOL in (node.pools or set())
        assert in_pool == (key.to_user_string() in expected), key
    job = defs.resolve_job_def("models_job")
    assert job.executor_def.name == "k8s_job_executor"
    cfg = executor_config(cluster_cfg, expected)
    result = process_config(k8s_job_executor.config_schema.as_field().config_type, cfg)
    assert result.success, result.errors
    per_step = result.value["per_step_k8s_config"]
    assert set(per_step) == expected
    for step_cfg in per_step.values():
        k8s = UserDefinedDagsterK8sConfig.from_dict(step_cfg)  # what dagster-k8s merges into the step's pod
        assert k8s.container_config["resources"]["limits"][GPU_RESOURCE] == ops.training_gpus
        assert k8s.container_config["resources"]["requests"][GPU_RESOURCE] == ops.training_gpus
    # the default profiles keep Dagster's local multiprocess executor
    assert (
        build_definitions(load_config("tiny")).resolve_job_def("models_job").executor_def.name
        != "k8s_job_executor"
    )


def test_helm_values_render_for_the_dagster_chart(cluster_cfg):
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    (dep,) = values["dagster-user-deployments"]["deployments"]
    assert dep["dagsterApiGrpcArgs"] == ["-m", "hms_dagster.definitions"]
    assert {"name": "HMS_CONFIG", "value": "/opt/hms/deploy/hms-cluster.yaml"} in dep["env"]
    assert dep["image"]["repository"] and dep["image"]["tag"]
    mounts = {m["mountPath"] for m in dep["volumeMounts"]}
    assert cluster_cfg.workspace.root in mounts  # the workspace lives on the shared volume in every pod
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s = {"container_config": launcher["runK8sConfig"]["containerConfig"]}
    UserDefinedDagsterK8sConfig.from_dict(run_k8s)
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    # the GPU step config shown to reviewers is exactly what the code renders
    assert values["hms"]["gpuStep"] == gpu_step_config(cluster_cfg)
    UserDefinedDagsterK8sConfig.from_dict(values["hms"]["gpuStep"])
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["maxConcurrentRuns"]
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert queued == instance["concurrency"]["runs"]["max_concurrent_runs"]


def test_dockerfile_serves_the_code_location_with_the_cluster_config():
    text = (DEPLOY / "Dockerfile").read_text()
    assert '"-m", "hms_dagster.definitions"' in text
    assert "COPY deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml" in text
    assert "HMS_CONFIG=/opt/hms/deploy/hms-cluster.yaml" in text
    for src in ("hms_core", "hms_dagster", "config", "pyproject.toml"):
        assert (DEPLOY.parent / src).exists(), src


def test_fold_partitions_fan_out_one_run_each_and_torchrun_command(cluster_cfg):
    defs = build_definitions(cluster_cfg)
    job = defs.resolve_job_def("models_job")
    assert job.partitions_def.get_partition_keys() == cluster_cfg.fold_names
    # a backfill of the models job is one run per fold (one k8s Job each, its steps as pods): no single-run policy
    graph = defs.resolve_asset_graph()
    for m in cluster_cfg.enabled_models():
        policy = graph.get(dg.AssetKey(model_asset_key(m))).backfill_policy
        assert policy is None or policy.max_partitions_per_run == 1, (m, policy)
    two = cluster_cfg.model_copy(
        update={"operations": cluster_cfg.operations.model_copy(update={"training_gpus": 2})}
    )
    cmd = torchrun_command(two, "resnet1d_gru", "fold_0")
    i = cmd.index("--nproc_per_node")
    assert cmd[i + 1] == "2" and cmd[cmd.index("-m") + 1] == "hms_core.training.ddp"
    assert cmd[-4:] == ["--model", "resnet1d_gru", "--fold", "fold_0"]
