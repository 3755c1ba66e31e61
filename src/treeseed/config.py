"""The user's settings: a TOML file in the platform's user config directory.

``$TREESEED_CONFIG`` names another file. Two kinds of content:

* top-level keys, the settings ``treeseed config`` lists, gets, sets and unsets (:data:`KEYS`:
  the swarm, mirrors, private packages). Each has a type that validates what is written and
  what is read back, and a default that suits a real user;
* ``[fetchers]``: commands for URL schemes treeseed does not fetch itself
  (``"s3" = "my-s3-fetcher --region eu"``; the URL is appended).

Reading uses tomllib on demand (most commands never need the file); writing uses tomlkit, so a
hand-edited file keeps its comments, and goes through one atomic rename.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Where the file is and what it says: a module of its own, light enough for a fetch of one URL.
from .configfile import config_path as config_path
from .configfile import fetchers as fetchers
from .configfile import load as load
from .errors import ManifestError, TreeseedError
from .ids import is_bt2


class ConfigError(TreeseedError):
    """A setting's name or value is not valid."""


# --------------------------------------------------------------------------- value types


_ON = {"on", "true", "yes", "1"}
_OFF = {"off", "false", "no", "0"}
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>\d{1,5})$")
_URL = re.compile(r"^(?:https?|udp)://[^\s/]+(?:/\S*)?$")
_MIRROR_URL = re.compile(r"^(?:https?://[^\s/]+(?:/\S*)?|file:///\S*)$")
_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}
_AMOUNT = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmg]i?)?b?(?:/s)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Kind:
    """How a setting is written by ``config set``, stored in TOML, and shown."""

    name: str
    parse: Callable[[str], Any]  # the text given to `config set` -> the stored value
    check: Callable[[Any], Any]  # a value read from the file -> the same value, or ValueError
    show: Callable[[Any], str]  # the stored value -> the text `config get` prints


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _ON:
        return True
    if low in _OFF:
        return False
    raise ValueError("expected on or off")


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _host_port(text: str) -> str:
    text = text.strip()
    m = _HOST_PORT.match(text)
    if not m or not 0 <= int(m["port"]) <= 65535:
        raise ValueError(f"{text!r} is not host:port (an IPv6 address goes in brackets: [::1]:6881)")
    return text


def _url(text: str) -> str:
    text = text.strip()
    if not _URL.match(text):
        raise ValueError(f"{text!r} is not an http://, https:// or udp:// URL")
    return text


def _mirror(text: str) -> str:
    text = text.strip().rstrip("/")
    if not _MIRROR_URL.match(text):
        raise ValueError(f"{text!r} is not an http://, https:// or file:/// URL")
    return text


def _gateway(text: str) -> str:
    text = text.strip()
    if not re.fullmatch(r"https?://[^\s/]+(?:/\S*)?", text):
        raise ValueError(f"{text!r} is not an http:// or https:// gateway URL")
    return text.rstrip("/")


def _package_ref(text: str) -> str:
    text = text.strip()
    if not text or any(c.isspace() for c in text) or (text.startswith("bt2-") and not is_bt2(text)):
        raise ValueError(f"{text!r} is neither a package name nor a bt2-<64 hex> hash")
    return text


def _amount(text: str) -> int:
    m = _AMOUNT.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not an amount of bytes per second (e.g. 0, 500k, 2Mi)")
    value = float(m[1]) * _UNITS[(m[2] or "").lower()]
    if 0 < value < 1:  # would round to 0, which means no limit at all
        raise ValueError(f"{text!r} is less than one byte per second; 0 means unlimited")
    return int(value)


def _check_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a whole number, 0 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("s"))
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    return _check_seconds(int(value) if value.is_integer() else value)


def _check_seconds(value: Any) -> float:
    # nan and inf parse as floats (and TOML has both), but a seeder would never announce
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < 0):
        raise ValueError("expected a number of seconds, 0 or more")
    return value


def _list_of(item: Callable[[str], str]) -> tuple[Callable[[str], list[str]], Callable[[Any], list[str]]]:
    def parse(text: str) -> list[str]:
        return [item(part) for part in text.split(",") if part.strip()]

    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        return [item(v) for v in value]

    return parse, check


def _scalar(item: Callable[[str], str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return item(value)

    return check


def _list_kind(name: str, item: Callable[[str], str]) -> Kind:
    parse, check = _list_of(item)
    return Kind(name, parse, check, ",".join)


ON_OFF = Kind("on/off", _parse_bool, _check_bool, lambda v: "on" if v else "off")
HOST_PORT = Kind("host:port", _host_port, _scalar(_host_port), str)
BYTES_PER_SECOND = Kind("bytes/s, 0 = unlimited", _amount, _check_count, str)
SECONDS = Kind("seconds", _seconds, _check_seconds, str)


@dataclass(frozen=True)
class Key:
    name: str
    kind: Kind
    default: Any
    help: str


#: libtorrent's own default bootstrap node plus the long-standing public routers.
PUBLIC_DHT_BOOTSTRAP = ["dht.libtorrent.org:25401", "router.bittorrent.com:6881",
                        "router.utorrent.com:6881", "dht.transmissionbt.com:6881"]

KEYS: dict[str, Key] = {k.name: k for k in (
    Key("torrent", ON_OFF, False, "fetch from and seed to the BitTorrent swarm"),
    Key("listen", HOST_PORT, "0.0.0.0:6881", "where the BitTorrent session listens"),
    Key("peers", _list_kind("host:port list", _host_port), [],
        "peers always connected to, for every package"),
    Key("dht", ON_OFF, True, "find peers through the mainline DHT"),
    Key("dht_bootstrap", _list_kind("host:port list", _host_port), PUBLIC_DHT_BOOTSTRAP,
        "DHT nodes to join the DHT through"),
    Key("lsd", ON_OFF, True, "local service discovery: find peers on the LAN by multicast"),
    Key("upnp", ON_OFF, False, "ask the router to forward the listen port (UPnP and NAT-PMP)"),
    Key("trackers", _list_kind("URL list", _url), [], "trackers announced to for every package"),
    Key("upload_limit", BYTES_PER_SECOND, 0, "upload rate limit in bytes/s (0: none)"),
    Key("download_limit", BYTES_PER_SECOND, 0, "download rate limit in bytes/s (0: none)"),
    Key("seed_delay", SECONDS, 30, "seconds an idle seeder waits before announcing"),
    Key("mirrors", _list_kind("URL list", _mirror), [],
        "content-addressed mirrors (treeseed serve), tried before origin URLs"),
    Key("ipfs_gateways", _list_kind("URL list", _gateway), ["https://trustless-gateway.link"],
        "trustless IPFS gateways ipfs:// sources are fetched from, in order"),
    Key("private", _list_kind("names or hashes", _package_ref), [],
        "packages never announced, seeded, served or looked up in the swarm"),
    Key("share", _list_kind("names or hashes", _package_ref), [],
        "packages from local paths or file:// that may be seeded and served all the same"),
)}


def key(name: str) -> Key:
    try:
        return KEYS[name]
    except KeyError:
        raise ConfigError(f"unknown setting {name!r}; the settings are: "
                          f"{', '.join(KEYS)}") from None


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Settings:
    """Every setting, validated, defaults filled in. ``explicit`` names those the file sets."""

    values: dict[str, Any]
    explicit: frozenset[str]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def defaults(cls) -> Settings:
        return cls({name: spec.default for name, spec in KEYS.items()}, frozenset())

    def with_overrides(self, **overrides: Any) -> Settings:
        """The same settings with some replaced for one command (``--torrent``)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        for name in given:
            key(name)
        return Settings({**self.values, **given}, self.explicit | frozenset(given))


def settings() -> Settings:
    """Read and validate the settings file; a bad value is an error naming file and key."""
    raw = load()
    path = config_path()
    values: dict[str, Any] = {}
    for name, spec in KEYS.items():
        if name not in raw:
            values[name] = spec.default
            continue
        try:
            values[name] = spec.kind.check(raw[name])
        except ValueError as exc:
            raise ManifestError(str(path), f"{exc}; fix it with 'treeseed config set {name} "
                                f"VALUE' or remove it with 'treeseed config unset {name}'",
                                key=name) from None
    unknown = [k for k, v in raw.items() if k not in KEYS and not isinstance(v, dict)]
    if unknown:
        raise ManifestError(str(path), f"unknown setting {unknown[0]!r}; the settings are: "
                            f"{', '.join(KEYS)}; remove it with 'treeseed config unset "
                            f"{unknown[0]}'", key=unknown[0])
    return Settings(values, frozenset(k for k in KEYS if k in raw))


def show(name: str, value: Any) -> str:
    return key(name).kind.show(value)


# --------------------------------------------------------------------------- writing


def set_value(name: str, text: str) -> Any:
    """Validate ``text`` for setting ``name`` and store it; returns the stored value."""
    spec = key(name)
    try:
        value = spec.kind.parse(text)
    except ValueError as exc:
        raise ConfigError(f"setting {name} ({spec.kind.name}): {exc}") from None
    _edit(lambda doc: doc.__setitem__(name, value))
    return value


def add_shared(packages: list[str]) -> None:
    """Add ``packages`` to the ``share`` setting after those it lists already: local packages
    the user says may be published (``treeseed seed --share``)."""
    merged = list(dict.fromkeys([*settings().share, *packages]))  # each once, in order
    set_value("share", ",".join(merged))


def unset(name: str) -> bool:
    """Remove ``name`` from the file (it falls back to its default); False if it was not set.
    An unknown name is removed too if the file has it (that is how a misspelt key is fixed)."""
    if name not in KEYS and name not in load():
        key(name)
    found = []

    def drop(doc: Any) -> None:
        if name in doc:
            found.append(True)
            del doc[name]

    _edit(drop)
    return bool(found)


def _edit(change: Callable[[Any], None]) -> None:
    """Apply ``change`` to the settings document, keeping comments, and replace the file in
    one rename. Top-level keys must precede tables in TOML, which tomlkit takes care of."""
    import tomlkit

    from .manifest import write_atomically

    path = config_path()
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        doc = tomlkit.parse(text)
    except Exception as exc:  # tomlkit's parse errors have no common public base
        raise ManifestError(str(path), f"invalid TOML: {exc}") from None
    change(doc)
    out = tomlkit.dumps(doc)
    if out and not out.endswith("\n"):
        out += "\n"
    tomllib.loads(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, out)
