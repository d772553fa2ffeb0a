"""`drtool schedule export --kubernetes DIR`: manifests that validate offline against the Kubernetes schema.

kubernetes-validate ships the JSON schemas of every Kubernetes release; strict mode refuses
unknown fields, so a typo in a securityContext fails here, not in a cluster.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from drtool.cli import main
from drtool.config import load_settings
from drtool.config.fleet import load_fleet

kubernetes_validate = pytest.importorskip("kubernetes_validate")

KEY = base64.b64encode(b"k" * 32).decode()


@pytest.fixture()
def setup(tmp_path: Path) -> Path:
    root = tmp_path / "etc"
    (root / "policies").mkdir(parents=True)
    (root / "playbooks").mkdir()
    (root / "drtool.yaml").write_text("""
state_dir: /var/lib/drtool
timezone: Asia/Jakarta
repositories:
  offsite:
    url: s3:https://s3.example.org/office/siak
    password: {file: /etc/drtool/offsite.pass}
    s3: {access_key_id: {env: DR_S3_ACCESS_KEY}, secret_access_key: {env: DR_S3_SECRET_KEY}}
""")
    (root / "policies" / "siak.yaml").write_text("""
name: siak
repository: offsite
schedule: daily 02:00
check: {schedule: weekly sun 04:00}
sources:
  - {name: siak-db, postgres: {database: siak, host: db.siak.internal, password: {env: SIAK_DB_PW}}}
""")
    (root / "policies" / "scans.yaml").write_text("""
name: scans
repository: offsite
schedule: daily 03:00
sources:
  - {name: scans, files: {paths: [/srv/scans]}}
""")
    (root / "playbooks" / "siak-drill.yaml").write_text("""
name: siak-drill
policy: siak
schedule: "0 5 * * 1"
steps:
  - {name: restore, restore: {source: siak-db}}
""")
    (root / "fleet.yaml").write_text(f"""
state_dir: /var/lib/drtool-fleet
sites:
  - name: palembang
    repository: s3:https://s3.example.org/office-palembang/siak
    s3: {{access_key_id: {{env: PLB_RO_KEY}}, secret_access_key: {{env: PLB_RO_SECRET}}}}
    signing_key: {KEY}
    drills:
      - name: fire
        policy: siak
        schedule: "0 3 1 * *"
        from_nothing: {{kit: /etc/drtool-fleet/kits/palembang.age, passphrase: {{file: /etc/drtool-fleet/kits/palembang.pass}}}}
pool:
  database: {{host: pg.central.internal, password: {{file: /etc/drtool-fleet/pool-db.pass}}}}
""")
    return root


def _export(setup: Path, out: Path, *extra: str) -> tuple[int, list[dict]]:
    code = main(["-c", str(setup / "drtool.yaml"), "schedule", "export", "--kubernetes", str(out),
                 "--image", "registry.example.org/drtool:0.1.0", *extra])
    return code, [json.loads(p.read_text()) for p in sorted(out.glob("*.yaml"))]


def test_manifests_validate_against_the_kubernetes_schema(setup: Path, tmp_path: Path) -> None:
    code, docs = _export(setup, tmp_path / "k8s", "--fleet", str(setup / "fleet.yaml"), "--pool-workers", "3")
    assert code == 0
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert ("CronJob", "drtool-backup-siak") in kinds and ("CronJob", "drtool-check-siak") in kinds
    assert ("CronJob", "drtool-drill-siak-drill") in kinds and ("Job", "drtool-pool-workers") in kinds
    assert ("CronJob", "drtool-pool-enqueue") in kinds
    # Local files cannot be backed up from a pod: not exported, and said so.
    assert ("CronJob", "drtool-backup-scans") not in kinds
    assert "backup:scans" in (tmp_path / "k8s" / "secrets.md").read_text()


def test_pods_are_hardened_and_take_secrets_from_kubernetes_secrets(setup: Path, tmp_path: Path) -> None:
    _code, docs = _export(setup, tmp_path / "k8s", "--fleet", str(setup / "fleet.yaml"), "--pool-workers", "3")
    backup = next(d for d in docs if d["metadata"]["name"] == "drtool-backup-siak")
    assert backup["spec"]["schedule"] == "0 2 * * *" and backup["spec"]["timeZone"] == "Asia/Jakarta"
    assert backup["spec"]["concurrencyPolicy"] == "Forbid"
    pod = backup["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][:3] == ["drtool", "--config", "/etc/drtool/drtool.yaml"]
    assert container["command"][3:] == ["backup", "siak"]
    for ctx in (container["securityContext"], pod["initContainers"][0]["securityContext"]):
        assert ctx["readOnlyRootFilesystem"] and ctx["runAsNonRoot"] and not ctx["allowPrivilegeEscalation"]
        assert ctx["capabilities"] == {"drop": ["ALL"]} and ctx["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {"DR_S3_ACCESS_KEY": "drtool-env", "DR_S3_SECRET_KEY": "drtool-env", "SIAK_DB_PW": "drtool-env"}
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/drtool/offsite.pass", "/var/lib/drtool", "/tmp", "/etc/drtool"} <= mounted
    workers = next(d for d in docs if d["kind"] == "Job")
    assert workers["spec"]["parallelism"] == 3
    wpod = workers["spec"]["template"]["spec"]["containers"][0]
    assert wpod["command"][-1] == "--until-empty"
    assert {"/etc/drtool-fleet/kits/palembang.age", "/etc/drtool-fleet/pool-db.pass",
            "/var/lib/drtool-fleet/pool/signing-key.pem"} <= {m["mountPath"] for m in wpod["volumeMounts"]}
    text = "".join(json.dumps(d) for d in docs)
    config = next(d for d in docs if d["metadata"]["name"] == "drtool-config")
    assert any("db.siak.internal" in v for v in config["data"].values())   # the files, with references only
    assert "password: {file:" in text or "offsite.pass" in text


def test_a_zone_kubernetes_cannot_name_is_refused(setup: Path, tmp_path: Path) -> None:
    cfg = setup / "drtool.yaml"
    cfg.write_text(cfg.read_text().replace("timezone: Asia/Jakarta\n", ""))
    import os
    old = os.environ.get("TZ")
    os.environ["TZ"] = "EST5EDT,M3.2.0,M11.1.0"
    try:
        code = main(["-c", str(cfg), "schedule", "export", "--kubernetes", str(tmp_path / "k")])
    finally:
        if old is None:
            os.environ.pop("TZ")
        else:
            os.environ["TZ"] = old
    assert code == 2 and not (tmp_path / "k").exists()


def test_settings_and_fleet_load(setup: Path) -> None:
    assert load_settings(str(setup / "drtool.yaml")).policies["siak"].sources[0].kind == "postgres"
    assert load_fleet(str(setup / "fleet.yaml")).pool.database.host == "pg.central.internal"
