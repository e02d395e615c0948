"""Kubernetes verbs: ``orchestrator operator`` (the operator; the container's command) and
``orchestrator crd`` (the TrainingJob CRD, generated from the job spec models).

kopf and the kubernetes client are imported only when these verbs run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from orchestrator.cli.common import handle_errors
from orchestrator.errors import NotAvailableError, UsageError


@click.command()
@click.option("--namespace", "-n", "namespaces", multiple=True, metavar="NS",
              help="Run TrainingJobs of this namespace (repeatable; default: all namespaces).")
@click.option("--context", "kube_context", default=None, metavar="CTX",
              help="kubeconfig context (default: the pod's service account, else the current context).")
@click.option("--pools-namespace", default=None, metavar="NS",
              help="Read node-pool ConfigMaps only from this namespace (default: every namespace).")
@click.option("--pools-poll-interval", "pools_poll_s", type=click.FloatRange(1, 3600), default=15.0,
              show_default=True, help="Seconds between re-reads of the --pools-namespace ConfigMaps.")
@click.option("--pools-from-nodes", is_flag=True,
              help="Also derive pools from Nodes, grouped by --node-pool-label.")
@click.option("--node-pool-label", default="cloud.google.com/gke-nodepool", show_default=True)
@click.option("--retry-interval", type=click.FloatRange(1, 86400), default=60.0, show_default=True,
              help="Seconds between retries of waiting jobs (they are also retried when pools change).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Serve the operator's Prometheus /metrics here (0: a free port).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True)
@click.option("--health-port", type=click.IntRange(0, 65535), default=8081, show_default=True,
              help="kopf's liveness endpoint /healthz on this port (0: off).")
@click.option("--image", envvar="ORCHESTRATOR_RUNTIME_IMAGE", default=None, metavar="IMAGE",
              help="Image of the Ray head and workers (default: ORCHESTRATOR_RUNTIME_IMAGE, else the release image).")
@click.option("--head-cpu", default="1", show_default=True, help="CPU of the Ray head pod.")
@click.option("--head-memory", default="4Gi", show_default=True, help="Memory of the Ray head pod.")
@click.option("--worker-memory", default="4Gi", show_default=True,
              help="Memory per worker when a spec gives none.")
@click.option("--ttl", "ttl_s", type=click.IntRange(0), default=600, show_default=True,
              help="ttlSecondsAfterFinished of RayJobs.")
@click.option("--service-account", default=None, help="ServiceAccount of the Ray pods.")
@click.option("--workdir", default="/app", show_default=True,
              help="Relative paths in specs resolve against this directory of the image.")
@click.option("--operator-namespace", default=None, metavar="NS",
              help="The operator's own namespace, admitted to the Ray ports by each job's NetworkPolicy "
                   "(default: POD_NAMESPACE, else orchestrator-system).")
@click.option("--kuberay-namespace", default="kuberay-system", show_default=True, metavar="NS",
              help="KubeRay's operator namespace: its pods labelled app.kubernetes.io/name=kuberay-operator "
                   "there are admitted to the Ray ports by each job's NetworkPolicy.")
@click.option("--prometheus-namespace", default=None, metavar="NS",
              help="Where Prometheus runs: the only namespace admitted to the jobs' metrics ports "
                   "(default: any namespace).")
@click.option("--ray-uid", "run_as_user", type=click.IntRange(1), default=1000, show_default=True,
              help="The non-root user (and group) the Ray pods run as.")
@click.option("--kueue", is_flag=True,
              help="Kueue admits every job (LocalQueue: resources.queue): RayJobs are created suspended with "
                   "Kueue's labels, and the operator's pools hold nothing.")
@click.option("--kueue-namespace", "kueue_namespaces", multiple=True, metavar="NS",
              help="Kueue admits the jobs of this namespace, as --kueue does for all (repeatable).")
@click.option("--leader-elect", is_flag=True,
              help="Run as one of several replicas: only the holder of a coordination.k8s.io Lease acts.")
@click.option("--lease-name", default="orchestrator-operator", show_default=True, help="The Lease's name.")
@click.option("--lease-namespace", envvar="POD_NAMESPACE", default=None, metavar="NS",
              help="The Lease's namespace (default: POD_NAMESPACE, else the pod's service-account namespace).")
@click.option("--lease-duration", type=click.FloatRange(3, 600), default=15.0, show_default=True,
              help="Seconds a Lease not renewed stays held; the leader stops after 2/3 of it without a renewal.")
@click.option("--identity", envvar="POD_NAME", default=None, metavar="NAME",
              help="This replica's name in the Lease (default: POD_NAME, else host name and a random suffix).")
@click.option("--policy", default=None, help="Scheduling policy (default: the pools' scheduler.policy, else las).")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@handle_errors
def operator(
    namespaces: tuple[str, ...], kube_context: str | None, pools_namespace: str | None, pools_poll_s: float,
    pools_from_nodes: bool,
    node_pool_label: str, retry_interval: float, metrics_port: int, metrics_host: str, health_port: int,
    image: str | None, head_cpu: str, head_memory: str, worker_memory: str, ttl_s: int,
    service_account: str | None, workdir: str, operator_namespace: str | None, kuberay_namespace: str,
    prometheus_namespace: str | None, run_as_user: int, kueue: bool, kueue_namespaces: tuple[str, ...], leader_elect: bool,
    lease_name: str, lease_namespace: str | None, lease_duration: float, identity: str | None, policy: str | None,
    verbose: bool,
) -> None:
    """Run the Kubernetes operator: TrainingJobs -> KubeRay RayJobs on node pools."""
    if not kuberay_namespace.strip():
        raise UsageError("--kuberay-namespace is empty, which would admit pods labelled "
                         "app.kubernetes.io/name=kuberay-operator from any namespace to the Ray ports",
                         fix="name the namespace KubeRay's operator runs in (default: kuberay-system)")
    try:
        import asyncio

        import kopf
    except ImportError:
        raise NotAvailableError("the operator needs kopf and the kubernetes client",
                                fix="pip install 'train-orchestrator[kubernetes]'") from None
    from orchestrator.backends.k8s.client import KubeApi, load_api_client
    from orchestrator.backends.k8s.manifests import DEFAULT_IMAGE, RuntimeConfig
    from orchestrator.operator.controller import Controller, OperatorConfig
    from orchestrator.operator.handlers import run_operator

    runtime = RuntimeConfig(image=image or DEFAULT_IMAGE, head_cpu=head_cpu, head_memory=head_memory,
                            worker_memory=worker_memory, ttl_seconds_after_finished=ttl_s,
                            service_account=service_account, workdir=workdir, kueue=kueue,
                            operator_namespace=operator_namespace or os.environ.get("POD_NAMESPACE")
                            or "orchestrator-system",
                            kuberay_namespace=kuberay_namespace, prometheus_namespace=prometheus_namespace,
                            run_as_user=run_as_user, run_as_group=run_as_user)
    liveness = f"http://0.0.0.0:{health_port}/healthz" if health_port else None
    config = OperatorConfig(namespaces=namespaces, pools_namespace=pools_namespace, pools_poll_s=pools_poll_s,
                            pools_from_nodes=pools_from_nodes, node_pool_label=node_pool_label,
                            retry_interval_s=retry_interval, metrics_port=metrics_port, metrics_host=metrics_host,
                            liveness_endpoint=liveness, policy=policy, runtime=runtime,
                            kueue_namespaces=kueue_namespaces)
    from orchestrator.operator.handlers import run_operator_elected
    from orchestrator.operator.leader import (
        ElectionConfig,
        LeaderElector,
        default_identity,
        default_namespace,
    )

    election = None
    if leader_elect:
        lease_ns = lease_namespace or default_namespace()
        if lease_ns is None:
            raise UsageError("--leader-elect needs the Lease's namespace",
                             fix="pass --lease-namespace NS (in a pod: set POD_NAMESPACE from the downward API)")
        election = ElectionConfig(namespace=lease_ns, name=lease_name, identity=identity or default_identity(),
                                  lease_duration_s=lease_duration, renew_deadline_s=lease_duration * 2 / 3,
                                  retry_period_s=min(2.0, lease_duration / 7.5))
    kopf.configure(verbose=verbose)
    api = KubeApi(load_api_client(kube_context))
    controller = Controller(api, config)
    if election is None:
        asyncio.run(run_operator(controller, api))
        return
    elector = LeaderElector(api, election)
    if metrics_port is not None:  # the standby serves /metrics too (a scrape target that is up)
        controller.metrics.serve(metrics_port, metrics_host)
    asyncio.run(run_operator_elected(controller, api, elector))
    elector.release()


@click.command()
@click.option("--write", "write", is_flag=True, help="Write it to --path instead of printing it.")
@click.option("--check", is_flag=True, help="Exit 2 when --path differs from the models (for CI).")
@click.option("--path", type=click.Path(dir_okay=False, path_type=Path), default=Path("deploy/k8s/base/crd.yaml"),
              show_default=True)
@handle_errors
def crd(write: bool, check: bool, path: Path) -> None:
    """Print the TrainingJob CustomResourceDefinition, generated from the job spec models."""
    from orchestrator.backends.k8s.crd import render_crd_yaml

    text = render_crd_yaml()
    if check:
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current != text:
            raise UsageError(f"{path} is out of date with the job spec models",
                             fix=f"regenerate it: orchestrator crd --write --path {path}")
        click.echo(f"{path} is up to date")
    elif write:
        path.write_text(text, encoding="utf-8")
        click.echo(f"wrote {path}")
    else:
        sys.stdout.write(text)


#: The verbs of this module (added to the command line by :mod:`orchestrator.cli`).
COMMANDS: tuple[click.Command, ...] = (operator, crd)
