"""The Pod Security Standards' "restricted" level (baseline included) as a check over every pod
template in an object, plus our own rule: no automounted service-account token.

Fields from https://kubernetes.io/docs/concepts/security/pod-security-standards/ (v1.30+).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: The volume types "restricted" allows.
RESTRICTED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                                "persistentVolumeClaim", "projected", "secret"})
_SAFE_SYSCTLS = frozenset({"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
                           "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
                           "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
                           "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                           "net.ipv4.tcp_keepalive_probes"})
_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})


def pod_specs(obj: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec in ``obj`` (a dict with a ``containers`` list), with its path."""
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            yield path or ".", obj
            return
        for key, value in obj.items():
            yield from pod_specs(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from pod_specs(value, f"{path}[{i}]")


def _pod_violations(path: str, pod: dict[str, Any]) -> list[str]:
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"{path}.{key} is true")
    if pod.get("automountServiceAccountToken") is not False:
        out.append(f"{path}.automountServiceAccountToken is not false")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"{path}.volumes[{volume.get('name')}] is of a type restricted refuses: {sorted(kinds)}")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            out.append(f"{path}.securityContext.sysctls has unsafe {sysctl.get('name')}")
    if psc.get("runAsUser") == 0:
        out.append(f"{path}.securityContext.runAsUser is 0")
    containers = [*(pod.get("initContainers") or []), *pod["containers"], *(pod.get("ephemeralContainers") or [])]
    for c in containers:
        where = f"{path}.containers[{c.get('name')}]"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{where} is privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}.securityContext.allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}.securityContext.capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{where} adds capabilities {caps.get('add')}")
        if not (sc.get("runAsNonRoot") is True or (psc.get("runAsNonRoot") is True
                                                    and sc.get("runAsNonRoot") is not False)):
            out.append(f"{where}: runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0 or (sc.get("runAsUser") is None and psc.get("runAsUser") in (None, 0)):
            out.append(f"{where}: runAsUser is 0 or unset (the image's user may be root)")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile.type is {seccomp!r}, not RuntimeDefault or Localhost")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{where}.securityContext.procMount is {sc.get('procMount')}")
        selinux = {**(psc.get("seLinuxOptions") or {}), **(sc.get("seLinuxOptions") or {})}
        if selinux.get("type", "") not in _SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            out.append(f"{where}: seLinuxOptions {selinux} not allowed")
        apparmor = (sc.get("appArmorProfile") or psc.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"{where}: appArmorProfile {apparmor}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{where} uses hostPort {port['hostPort']}")
    return out


def restricted_violations(obj: dict[str, Any]) -> list[str]:
    """What keeps any pod template in ``obj`` from the "restricted" level ([] when none does).
    A RayJob must also render its submitter's pod (KubeRay's default one is not restricted)."""
    specs = list(pod_specs(obj))
    out = [] if specs else ["no pod template found"]
    if obj.get("kind") == "RayJob" and (obj.get("spec") or {}).get("submissionMode", "K8sJobMode") == "K8sJobMode" \
            and "submitterPodTemplate" not in obj["spec"]:
        out.append("RayJob: no submitterPodTemplate (KubeRay's default submitter pod is not restricted)")
    for path, pod in specs:
        out.extend(_pod_violations(path, pod))
    return out
