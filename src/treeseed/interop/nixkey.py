"""The ed25519 key that signs treeseed's Nix narinfos, kept in Nix's own secret-key format.

Nix with ``require-sigs = true`` (its default) accepts a substitute only if its narinfo carries
a signature by a key listed in ``trusted-public-keys``. treeseed makes one key pair on first use
and keeps it next to the settings file (:func:`key_path`), never in the cache: the cache is
what ``treeseed serve`` shares, and a key that left with it would let anyone sign for you.

The file is exactly what ``nix-store --generate-binary-cache-key NAME SECRET PUBLIC`` writes as
SECRET, ``NAME:<base64 of the 32-byte seed and the 32-byte public key>``, so a key Nix made can be
put there (and treeseed's used with ``nix store sign``). It must be a regular file of the user's
with no group or other permission bits (0600, as created); anything else is refused rather than
used, since a key others could read signs for them too. The public half, ``NAME:<base64 of 32
bytes>``, is what ``treeseed nix key`` prints for ``trusted-public-keys``.

The signatures are ``cryptography``'s ed25519 (no hand-written crypto).

>>> key = load_or_create()                                  # doctest: +SKIP
>>> key.public                                              # doctest: +SKIP
'myhost-treeseed-1:8kX...='
>>> key.sign("1;/nix/store/...-source;sha256:...;648;")    # doctest: +SKIP
'myhost-treeseed-1:Yd2...=='
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TreeseedError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

#: The key file's name, next to the settings file (``$TREESEED_CONFIG``'s directory).
KEY_FILE = "nix-signing-key"
#: Overrides :func:`key_path`, e.g. to share one key among several mirrors of a LAN.
KEY_ENV = "TREESEED_NIX_KEY"
_NAME = re.compile(r"[A-Za-z0-9._+-]{1,100}")


class SigningKeyError(TreeseedError):
    """The signing key cannot be read, made or trusted."""


def key_path() -> Path:
    """Where the key lives: ``$TREESEED_NIX_KEY``, else beside the settings file."""
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env)
    from ..config import config_path

    return config_path().parent / KEY_FILE


def default_name() -> str:
    """``<host>-treeseed-1``, Nix's ``<who>-<generation>`` convention for key names."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "localhost"
    return f"{host}-treeseed-1"


@dataclass(frozen=True)
class SigningKey:
    """A named ed25519 key pair; :meth:`sign` gives a narinfo's ``Sig`` value."""

    name: str
    private: Ed25519PrivateKey
    path: Path

    @property
    def public(self) -> str:
        """``NAME:<base64 public key>``, as ``trusted-public-keys`` lists keys."""
        return f"{self.name}:{base64.b64encode(_public_bytes(self.private)).decode()}"

    def sign(self, fingerprint: str) -> str:
        """``NAME:<base64 of the 64-byte ed25519 signature of fingerprint>``."""
        signature = self.private.sign(fingerprint.encode())
        return f"{self.name}:{base64.b64encode(signature).decode()}"


def load_or_create(path: Path | None = None, name: str | None = None) -> SigningKey:
    """The key at ``path`` (default :func:`key_path`), made first if there is none. Two
    processes making it at once both end up with the one that was linked into place first."""
    path = path or key_path()
    try:
        return load(path)
    except FileNotFoundError:
        pass
    _create(path, name or default_name())
    return load(path)


def load(path: Path) -> SigningKey:
    """Read and check a key file; FileNotFoundError if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SigningKeyError(f"cannot read the Nix signing key {path}: {exc.strerror}; fix its "
                        f"permissions, or move it away to have a new key made") from None
    with open(fd, "rb") as f:
        _check_private(os.fstat(fd), path)
        text = f.read(4096).decode("ascii", "replace").strip()
    return _parse(text, path)


def _check_private(st: os.stat_result, path: Path) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SigningKeyError(f"the Nix signing key {path} is not a regular file; remove it to "
                        "have a new key made")
    if st.st_uid != os.geteuid():
        raise SigningKeyError(f"the Nix signing key {path} belongs to uid {st.st_uid}, not to you; "
                        "anyone who owns it can sign for you: remove it to have a new key made")
    if st.st_mode & 0o077:
        raise SigningKeyError(f"the Nix signing key {path} can be read by others (mode "
                        f"{stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}' and, since "
                        "others may have copied it, consider making a new key")


def _parse(text: str, path: Path) -> SigningKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    name, sep, encoded = text.partition(":")
    try:
        raw = base64.b64decode(encoded, validate=True) if sep else b""
    except binascii.Error:
        raw = b""
    if not _NAME.fullmatch(name) or len(raw) != 64:
        raise SigningKeyError(f"{path} is not a Nix secret key (NAME:BASE64 of 64 bytes, as "
                        "'nix-store --generate-binary-cache-key' writes); move it away to have "
                        "a new key made")
    private = Ed25519PrivateKey.from_private_bytes(raw[:32])
    if _public_bytes(private) != raw[32:]:
        raise SigningKeyError(f"{path}: the public half does not belong to the secret half; the file "
                        "is damaged: move it away to have a new key made")
    return SigningKey(name, private, path)


def _create(path: Path, name: str) -> None:
    """Write a new key to a private temporary file, then link it into place: the key file
    appears whole and 0600, or not at all, and an existing key is never replaced."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    if not _NAME.fullmatch(name):
        raise SigningKeyError(f"{name!r} cannot name a Nix key: use letters, digits, '.', '_', '+', '-'")
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    text = f"{name}:{base64.b64encode(seed + _public_bytes(private)).decode()}"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "w", encoding="ascii") as f:
            os.fchmod(fd, 0o600)  # whatever the umask
            f.write(text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # made by another process meanwhile: that one is the key
    except OSError as exc:
        raise SigningKeyError(f"cannot make the Nix signing key {path}: {exc.strerror or exc}; make "
                        f"its directory writable, or set {KEY_ENV} to another file") from None
    finally:
        tmp.unlink(missing_ok=True)


def _public_bytes(private: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
