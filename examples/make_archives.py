"""Rebuild the example archives from the directories beside this file, byte for byte.

Entries are sorted, owned by 0:0 and dated 0, so the archive (and its archive-sha256) does not
depend on who builds it or when. Run: python examples/make_archives.py
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def deterministic_tar_gz(src: Path, dest: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in [src, *sorted(src.rglob("*"))]:
            info = tf.gettarinfo(str(path), arcname=str(path.relative_to(src.parent)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if path.is_file() and not path.is_symlink():
                with open(path, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)
    with open(dest, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())


if __name__ == "__main__":
    for name in ("hello-1.0", "greet-2.1", "zlib-1.3", "lame-3.100"):
        deterministic_tar_gz(HERE / name, HERE / f"{name}.tar.gz")
        print(HERE / f"{name}.tar.gz")
