"""Use case: `drtool schedule export --kubernetes DIR` -- the schedule as Kubernetes manifests.

Like the systemd units (drtool.actions.systemd), generated from the same jobs and commands:
- one CronJob per scheduled job whose data the cluster can reach: backups of policies whose
  every source is a database on another host (or the policy runs over SSH: `host:`), and every
  forget, check and drill (they read the bucket); backups of local files or SQLite files are
  left out and listed (they belong to the machine that has the disk);
- with `--fleet FILE` and a `pool:` section: a Job of N drill-pool workers (`pool worker
  --until-empty`) and an hourly CronJob that queues the due drills;
- ConfigMaps with the configuration files (they hold secret references, never values);
- Secrets only by name: `env:` references become secretKeyRef entries of `drtool-env`, `file:`
  references files of `drtool-files` that an init container copies, mode 0600 and owned by the
  job's user, to the very path the reference names (drtool refuses secret files others can read);
  `secrets.md` lists the `kubectl create secret` commands, with names and never values;
- the hardening of the units: non-root (uid 10001), read-only root filesystem (writable: the
  state volume, /tmp and HOME as emptyDirs), no privilege escalation, every capability dropped,
  the runtime's seccomp profile, resource requests and memory limits per kind of job.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from drtool.actions.daemon import JobInfo
from drtool.actions.schedule import export_zone, job_argv, scheduled_jobs
from drtool.config.loader import Settings
from drtool.config.secrets import secret_refs
from drtool.errors import UsageError
from drtool.schedule_math import to_cron_fields

UID = 10001
CONFIG_DIR = "/etc/drtool"
FLEET_DIR = "/etc/drtool-fleet"
RESOURCES = {"backup": ({"cpu": "250m", "memory": "256Mi"}, {"memory": "1Gi"}),
             "forget": ({"cpu": "100m", "memory": "256Mi"}, {"memory": "1Gi"}),
             "check": ({"cpu": "250m", "memory": "512Mi"}, {"memory": "2Gi"}),
             "drill": ({"cpu": "500m", "memory": "1Gi"}, {"memory": "4Gi"}),
             "pool": ({"cpu": "1", "memory": "2Gi"}, {"memory": "6Gi"})}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _name(text: str) -> str:
    """A DNS-1123 name (lowercase, digits, '-', <= 52 so CronJob suffixes fit)."""
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return clean[:52].rstrip("-") or "x"


def _key(path: str) -> str:
    """A Secret/ConfigMap key for a file path (keys allow [-._a-zA-Z0-9])."""
    base = re.sub(r"[^-._a-zA-Z0-9]+", "-", Path(path).name) or "file"
    return f"{base}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def reachable(settings: Settings, info: JobInfo) -> str | None:
    """None when the job can run in a pod; else why not (pure)."""
    if info.kind != "backup":
        return None
    policy = settings.policies[info.policy]
    if policy.host:
        return None
    for source in policy.sources:
        spec = source.spec
        if source.kind in ("files", "sqlite"):
            return f"source {source.name} is a {source.kind} path on this machine"
        if getattr(spec, "socket", None) or (getattr(spec, "host", None) or "127.0.0.1") in LOOPBACK:
            return f"source {source.name} is a database on this machine's loopback"
    return None


# ---------------------------------------------------------------- pod pieces

def _refs(models: list[Any]) -> tuple[list[str], list[str], list[str]]:
    envs, files, commands = set(), set(), set()
    for model in models:
        for _loc, ref in secret_refs(model):
            if ref.env:
                envs.add(ref.env)
            elif ref.file:
                files.add(ref.file)
            else:
                commands.add((ref.command or ["?"])[0])
    return sorted(envs), sorted(files), sorted(commands)


def _security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "runAsUser": UID, "runAsGroup": UID, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def pod_spec(image: str, argv: list[str], kind: str, *, envs: list[str], files: list[str],
             mounts: list[tuple[str, str, str]], state_dir: str, extra_volumes: list[dict] = ()) -> dict[str, Any]:
    """A hardened pod: `mounts` = (volume name, ConfigMap name, mount path) of configuration."""
    requests, limits = RESOURCES[kind]
    volumes = [{"name": "state", "persistentVolumeClaim": {"claimName": "drtool-state"}},
               {"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}, *extra_volumes]
    volume_mounts = [{"name": "state", "mountPath": state_dir}, {"name": "tmp", "mountPath": "/tmp"},
                     {"name": "home", "mountPath": "/home/drtool"}]
    for volume, config_map, path in mounts:
        volumes.append({"name": volume, "configMap": {"name": config_map}})
        volume_mounts.append({"name": volume, "mountPath": path, "readOnly": True})
    init = []
    if files:
        volumes += [{"name": "secret-files", "secret": {"secretName": "drtool-files", "defaultMode": 0o440}},
                    {"name": "secrets", "emptyDir": {"medium": "Memory"}}]
        copies = " && ".join(f"install -m 600 /in/{_key(f)} /out/{_key(f)}" for f in files)
        init.append({"name": "secret-files", "image": image, "command": ["sh", "-c", copies],
                     "volumeMounts": [{"name": "secret-files", "mountPath": "/in", "readOnly": True},
                                      {"name": "secrets", "mountPath": "/out"}],
                     "securityContext": _security(), "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}})
        volume_mounts += [{"name": "secrets", "mountPath": f, "subPath": _key(f), "readOnly": True} for f in files]
    container = {"name": "drtool", "image": image, "command": argv, "securityContext": _security(),
                 "env": [{"name": "HOME", "value": "/home/drtool"}, {"name": "TMPDIR", "value": "/tmp"}]
                 + [{"name": n, "valueFrom": {"secretKeyRef": {"name": "drtool-env", "key": n}}} for n in envs],
                 "resources": {"requests": requests, "limits": limits}, "volumeMounts": volume_mounts}
    spec: dict[str, Any] = {"restartPolicy": "Never", "automountServiceAccountToken": False,
                            "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                                                "fsGroup": UID, "seccompProfile": {"type": "RuntimeDefault"}},
                            "containers": [container], "volumes": volumes}
    if init:
        spec["initContainers"] = init
    return spec


def _meta(name: str, namespace: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "drtool", "app.kubernetes.io/component": component}}


def cron_job(name: str, namespace: str, schedule: str, zone: str, pod: dict[str, Any], component: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": _meta(name, namespace, component),
            "spec": {"schedule": schedule, "timeZone": zone, "concurrencyPolicy": "Forbid",
                     "startingDeadlineSeconds": 3600, "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 5,
                     # drtool retries transient failures itself, inside one recorded run.
                     "jobTemplate": {"spec": {"backoffLimit": 0, "template": {
                         "metadata": {"labels": {"app.kubernetes.io/name": "drtool",
                                                 "app.kubernetes.io/component": component}},
                         "spec": pod}}}}}


# ---------------------------------------------------------------- the manifests

def config_map(name: str, namespace: str, files: dict[str, Path], component: str) -> tuple[dict, list[dict]]:
    """A ConfigMap of files (key -> text) and the volume items that put each at its relative path."""
    data = {_key(rel): path.read_text() for rel, path in files.items()}
    items = [{"key": _key(rel), "path": rel} for rel in files]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, namespace, component), "data": data}, items


def _config_files(settings: Settings) -> dict[str, Path]:
    files = {"drtool.yaml": settings.path}
    for kind, models in (("policies", settings.policies), ("playbooks", settings.playbooks)):
        for model in models.values():
            if model.path:
                files[f"{kind}/{Path(model.path).name}"] = Path(model.path)
    return files


def manifests(settings: Settings, *, image: str, namespace: str = "drtool", fleet: Any = None,
              workers: int = 2) -> tuple[dict[str, dict], list[str], dict[str, list[str]]]:
    """(file name -> manifest, skipped jobs with reasons, secrets needed: {"env": names, "files": paths})."""
    _zone, zone = export_zone(settings, "Kubernetes")
    models = [settings.config, *settings.policies.values(), *settings.playbooks.values()]
    envs, files, commands = _refs(models)
    out: dict[str, dict] = {}
    config, items = config_map("drtool-config", namespace, _config_files(settings), "config")
    out["configmap-drtool-config.yaml"] = config
    state_dir = str(settings.state_dir)
    volume = {"name": "config", "configMap": {"name": "drtool-config", "items": items}}
    skipped = []
    for info in scheduled_jobs(settings):
        why = reachable(settings, info)
        if why:
            skipped.append(f"{info.job.id}: {why} (run it with the systemd units or cron there)")
            continue
        argv = ["drtool", "--config", f"{CONFIG_DIR}/drtool.yaml"] + job_argv(settings, info, "drtool")[3:]
        pod = pod_spec(image, argv, info.kind, envs=envs, files=files, mounts=[], state_dir=state_dir,
                       extra_volumes=[volume])
        pod["containers"][0]["volumeMounts"].append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
        name = _name(f"drtool-{info.kind}-{info.job.name}")
        out[f"cronjob-{name}.yaml"] = cron_job(name, namespace, to_cron_fields(info.job.schedule), zone, pod, info.kind)
    out["pvc-drtool-state.yaml"] = _pvc("drtool-state", namespace)
    if fleet is not None:
        pool_out, pool_envs, pool_files = _pool_manifests(fleet, image, namespace, zone, workers)
        out.update(pool_out)
        envs, files = sorted(set(envs) | set(pool_envs)), sorted(set(files) | set(pool_files))
    return out, skipped, {"env": envs, "files": files, "commands": commands}


def _pvc(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(name, namespace, "state"),
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}


def _pool_manifests(fleet: Any, image: str, namespace: str, zone: str,
                    workers: int) -> tuple[dict[str, dict], list[str], list[str]]:
    from drtool.actions.pool import KEY_DIR

    if fleet.pool is None:
        raise UsageError(f"the fleet file {fleet.path} has no `pool:` section: no drill-pool manifests to export")
    kits = sorted({str(Path(d.from_nothing.kit) if Path(d.from_nothing.kit).is_absolute()
                       else Path(fleet.path).parent / d.from_nothing.kit)
                   for s in fleet.sites for d in s.drills})
    envs, files, _commands = _refs([fleet])
    files = sorted(set(files) | set(kits) | {str(fleet.state_path / KEY_DIR / "signing-key.pem")})
    config, items = config_map("drtool-fleet", namespace, {"fleet.yaml": Path(fleet.path)}, "fleet")
    volume = {"name": "fleet", "configMap": {"name": "drtool-fleet", "items": items}}
    base = ["drtool", "pool"]
    out: dict[str, dict] = {"configmap-drtool-fleet.yaml": config, "pvc-drtool-fleet-state.yaml": _pvc(
        "drtool-fleet-state", namespace)}
    for name, argv, kind in (("drtool-pool-workers", base + ["worker", "--fleet", f"{FLEET_DIR}/fleet.yaml",
                                                             "--until-empty"], "pool"),
                             ("drtool-pool-enqueue", base + ["enqueue", "--fleet", f"{FLEET_DIR}/fleet.yaml"], "backup")):
        pod = pod_spec(image, argv, kind, envs=envs, files=files, mounts=[], state_dir=str(fleet.state_path),
                       extra_volumes=[volume])
        pod["volumes"][0] = {"name": "state", "persistentVolumeClaim": {"claimName": "drtool-fleet-state"}}
        pod["containers"][0]["volumeMounts"].append({"name": "fleet", "mountPath": FLEET_DIR, "readOnly": True})
        scratch = {"name": "scratch", "emptyDir": {}}
        pod["volumes"].append(scratch)
        pod["containers"][0]["volumeMounts"].append({"name": "scratch", "mountPath": str(fleet.scratch_path)})
        if name == "drtool-pool-workers":
            out[f"job-{name}.yaml"] = {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(name, namespace, "pool"),
                                       "spec": {"parallelism": workers, "completions": workers, "backoffLimit": workers,
                                                "ttlSecondsAfterFinished": 86400,
                                                "template": {"metadata": {"labels": {"app.kubernetes.io/name": "drtool",
                                                             "app.kubernetes.io/component": "pool"}}, "spec": pod}}}
        else:
            out[f"cronjob-{name}.yaml"] = cron_job(name, namespace, "7 * * * *", zone, pod, "pool")
    return out, envs, files


def secrets_text(needed: dict[str, list[str]], namespace: str, skipped: list[str]) -> str:
    """How the admin creates the Secrets the manifests name: names and paths, never values."""
    lines = ["# Secrets for the drtool manifests (values are never written by drtool)", ""]
    if needed["env"]:
        lines += ["```sh", f"kubectl -n {namespace} create secret generic drtool-env \\"]
        lines += [f"  --from-literal={n}=\"$(cat ...)\" \\" for n in needed["env"]]
        lines[-1] = lines[-1].rstrip(" \\")
        lines += ["```", ""]
    if needed["files"]:
        lines += ["```sh", f"kubectl -n {namespace} create secret generic drtool-files \\"]
        lines += [f"  --from-file={_key(f)}={f} \\" for f in needed["files"]]
        lines[-1] = lines[-1].rstrip(" \\")
        lines += ["```", "", "Each file is copied by an init container to the same path in the job, mode 0600."]
    if needed["commands"]:
        lines += ["", "command: references run inside the image: " + ", ".join(needed["commands"])
                  + " must be installed in it."]
    if skipped:
        lines += ["", "Not exported (the data is not reachable from the cluster):", *[f"- {s}" for s in skipped]]
    return "\n".join(lines) + "\n"


def export_kubernetes(settings: Settings, out_dir: Path, *, image: str, namespace: str = "drtool",
                      fleet: Any = None, workers: int = 2) -> tuple[list[Path], list[str]]:
    """Write every manifest (JSON is YAML: one object per file) and secrets.md; return the files and skips."""
    built, skipped, needed = manifests(settings, image=image, namespace=namespace, fleet=fleet, workers=workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, manifest in built.items():
        path = out_dir / filename
        path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        path.chmod(0o644)          # configuration and references only, never secret values
        written.append(path)
    notes = out_dir / "secrets.md"
    notes.write_text(secrets_text(needed, namespace, skipped))
    written.append(notes)
    return written, skipped
