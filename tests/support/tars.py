"""Tar archives built member by member, names as given: what an attacker would put in a snapshot."""

from __future__ import annotations

import io
import tarfile

_LINK_TYPES = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}


def crafted_tar(members: list[tuple[str, str, bytes | str]], tar_format: int = tarfile.PAX_FORMAT) -> bytes:
    """(name, "file" | "dir" | "symlink" | "hardlink", data or link target) members -> archive
    bytes; names are kept as given (`..`, absolute, below a symlink)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tar_format) as tf:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))  # type: ignore[arg-type]
                continue
            info.type = _LINK_TYPES[kind]
            info.linkname = payload if isinstance(payload, str) else ""
            tf.addfile(info)
    return out.getvalue()
