"""`restic copy` from one repository into another, each with its own password and credentials.

restic 0.14 copies *into* the repository of `-r` / RESTIC_REPOSITORY *from* `--from-repo`
(0.13's `--repo2` pointed the other way and is gone). Both passwords travel through their own
anonymous pipe (RESTIC_PASSWORD_FILE and RESTIC_FROM_PASSWORD_FILE = /dev/fd/N), never argv.

Credentials: restic's S3 backend reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for both
repositories, so two S3 repositories with different keys cannot both be reached that way. Then
the source is read through restic's rclone backend instead (`rclone:drtoolsrc:BUCKET/PREFIX`),
whose S3 remote is defined by RCLONE_CONFIG_DRTOOLSRC_* variables in restic's environment
(again never argv); rclone must be installed (Debian package rclone).
"""

from __future__ import annotations

from collections.abc import Sequence

from drtool.engine.restic import PasswordPipe, RepoAccess, Restic, _base_env
from drtool.errors import CommandError
from drtool.execute import Result
from drtool.tools import require

RCLONE_REMOTE = "drtoolsrc"
_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def source_env(source: RepoAccess, dest: RepoAccess) -> tuple[dict[str, str], list[str]]:
    """(restic's environment for the source repository, extra restic options) (pure)."""
    url = source.env.get("RESTIC_REPOSITORY", source.url)     # rest: with its user info
    src_s3, dest_s3 = source.url.startswith("s3:"), dest.url.startswith("s3:")
    if not src_s3 or (dest_s3 and all(source.env.get(k) == dest.env.get(k) for k in _AWS)):
        return {"RESTIC_FROM_REPOSITORY": url}, []
    if not dest_s3:           # only the source speaks S3: its keys are the only AWS_* restic sees
        return {"RESTIC_FROM_REPOSITORY": url, **{k: v for k, v in source.env.items() if k.startswith("AWS_")}}, []
    return _rclone_source(source), ["-o", f"rclone.program={require('rclone')}"]


def _rclone_source(source: RepoAccess) -> dict[str, str]:
    from drtool.storage.s3_url import parse_s3_url

    loc = parse_s3_url(source.url)
    path = f"{loc.bucket}/{loc.prefix}" if loc.prefix else loc.bucket
    var = f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_"
    env = {"RESTIC_FROM_REPOSITORY": f"rclone:{RCLONE_REMOTE}:{path}",
           var + "TYPE": "s3", var + "PROVIDER": "Other", var + "ENDPOINT": loc.endpoint_url,
           var + "FORCE_PATH_STYLE": "true", var + "REGION": source.env.get("AWS_DEFAULT_REGION", "us-east-1")}
    if "AWS_ACCESS_KEY_ID" in source.env:
        env[var + "ACCESS_KEY_ID"] = source.env["AWS_ACCESS_KEY_ID"]
        env[var + "SECRET_ACCESS_KEY"] = source.env.get("AWS_SECRET_ACCESS_KEY", "")
    else:
        env[var + "ENV_AUTH"] = "true"
    return env


def copy_snapshots(dest: Restic, source: RepoAccess, snapshot_ids: Sequence[str], *,
                   timeout: float = 12 * 3600) -> Result:
    """Copy the given snapshots from `source` into `dest`'s repository (already copied ones are
    skipped by restic itself). Failures are mapped like any restic command's."""
    env, options = source_env(source, dest.access)
    args = [*options, "copy", *snapshot_ids]
    with PasswordPipe(dest.access.password) as pw, PasswordPipe(source.password) as from_pw:
        full_env = {**_base_env(dest.access), **pw.env, **env,
                    "RESTIC_FROM_PASSWORD_FILE": f"/dev/fd/{from_pw.read_fd}"}
        try:
            result = dest._runner.run(dest.argv(args), env=full_env, timeout=timeout, check=False,
                                      pass_fds=(pw.read_fd, from_pw.read_fd))
        except CommandError as exc:
            raise dest.error(exc.returncode, exc.stderr_tail, args) from None
    if result.returncode != 0:
        raise dest.error(result.returncode, result.stderr.decode("utf-8", "replace"), args)
    return result
