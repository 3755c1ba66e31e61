"""``treeseed config``: every setting's validation, list/get/set/unset, comments kept, and errors
in a hand-edited settings file that name the file and the key.

Most cases run the real command line in this process (``cli.main``: the same parser, the same
error handling, no interpreter start-up per case); the persistence case runs ``treeseed`` as a
subprocess, as a user would, and proves the kept ``torrent = on`` changes what a fetch does.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
from helpers import run_cli

from treeseed import cli

HASH = "bt2-" + "ab" * 32


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "settings" / "config.toml"
    monkeypatch.setenv("TREESEED_CONFIG", str(path))
    return path


def treeseed(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def ok(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    status, out, err = treeseed(capsys, *args)
    assert status == 0, err
    return out


def error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    status, out, err = treeseed(capsys, *args)
    assert status == 1, (out, err)
    assert err.startswith("treeseed: error: ") and err.count("\n") == 1, err
    return err


def stored(config: Path) -> dict:
    return tomllib.loads(config.read_text())


# --------------------------------------------------------------------------- set: each key


VALID = [
    # (key, text given to `config set`, value stored in TOML, what `config get` prints)
    ("torrent", "on", True, "on"),
    ("torrent", "OFF", False, "off"),
    ("torrent", "yes", True, "on"),
    ("torrent", "0", False, "off"),
    ("listen", "127.0.0.1:6881", "127.0.0.1:6881", "127.0.0.1:6881"),
    ("listen", "[::1]:6881", "[::1]:6881", "[::1]:6881"),
    ("listen", "localhost:0", "localhost:0", "localhost:0"),
    ("peers", "127.0.0.1:1, [::1]:2,,", ["127.0.0.1:1", "[::1]:2"], "127.0.0.1:1,[::1]:2"),
    ("peers", "", [], ""),
    ("dht", "off", False, "off"),
    ("dht_bootstrap", "127.0.0.1:6881,node.example:25401", ["127.0.0.1:6881", "node.example:25401"],
     "127.0.0.1:6881,node.example:25401"),
    ("lsd", "false", False, "off"),
    ("upnp", "on", True, "on"),
    ("trackers", "http://t.example/announce, udp://t.example:6969,https://t.example/a",
     ["http://t.example/announce", "udp://t.example:6969", "https://t.example/a"],
     "http://t.example/announce,udp://t.example:6969,https://t.example/a"),
    ("upload_limit", "0", 0, "0"),
    ("upload_limit", "500k", 500_000, "500000"),
    ("upload_limit", "2Mi", 2 * 1024 * 1024, "2097152"),
    ("download_limit", "1.5 MB/s", 1_500_000, "1500000"),
    ("download_limit", "100kb", 100_000, "100000"),
    ("seed_delay", "0", 0, "0"),
    ("seed_delay", "3s", 3, "3"),
    ("seed_delay", "0.5", 0.5, "0.5"),
    ("mirrors", "http://m.example/cache/, file:///srv/mirror",
     ["http://m.example/cache", "file:///srv/mirror"], "http://m.example/cache,file:///srv/mirror"),
    ("ipfs_gateways", "http://127.0.0.1:8750/, https://gw.example",
     ["http://127.0.0.1:8750", "https://gw.example"], "http://127.0.0.1:8750,https://gw.example"),
    ("private", f"secret-lib, {HASH}", ["secret-lib", HASH], f"secret-lib,{HASH}"),
    ("share", f"my-lib, {HASH}", ["my-lib", HASH], f"my-lib,{HASH}"),
]


@pytest.mark.parametrize("key,text,value,shown", VALID,
                         ids=[f"{k}={t!r}" for k, t, _, _ in VALID])
def test_set_stores_a_valid_value(capsys: pytest.CaptureFixture[str], config: Path,
                                  key: str, text: str, value: object, shown: str) -> None:
    out = ok(capsys, "config", "set", key, text)
    assert out == f"{key} = {shown}  ({config})\n"
    assert stored(config) == {key: value}
    assert ok(capsys, "config", "get", key) == shown + "\n"


INVALID = [
    # (key, text, words the error must contain)
    ("torrent", "maybe", "on or off"),
    ("torrent", "", "on or off"),
    ("listen", "nope", "host:port"),
    ("listen", "127.0.0.1", "host:port"),
    ("listen", "example.org:99999", "host:port"),
    ("listen", "::1:6881", "brackets"),
    ("peers", "127.0.0.1:1,b", "'b' is not host:port"),
    ("dht", "sometimes", "on or off"),
    ("dht_bootstrap", "router.example", "host:port"),
    ("lsd", "2", "on or off"),
    ("upnp", "y", "on or off"),
    ("trackers", "ftp://t.example/announce", "http://, https:// or udp://"),
    ("trackers", "t.example:6969", "http://, https:// or udp://"),
    ("upload_limit", "fast", "bytes per second"),
    ("upload_limit", "-1", "bytes per second"),
    ("download_limit", "1 TB", "bytes per second"),
    ("seed_delay", "soon", "seconds"),
    ("seed_delay", "-1", "0 or more"),
    ("seed_delay", "nan", "0 or more"),
    ("seed_delay", "inf", "0 or more"),
    ("mirrors", "ftp://m.example", "http://, https:// or file:///"),
    ("mirrors", "file://host/x", "http://, https:// or file:///"),
    ("ipfs_gateways", "ipfs://gw.example", "is not an http:// or https:// gateway URL"),
    ("private", "bt2-abc", "neither a package name nor a bt2-<64 hex> hash"),
    ("private", "two words", "neither a package name"),
    ("share", "bt2-abc", "neither a package name nor a bt2-<64 hex> hash"),
]


@pytest.mark.parametrize("key,text,words", INVALID, ids=[f"{k}={t!r}" for k, t, _ in INVALID])
def test_set_refuses_an_invalid_value_and_leaves_the_file(capsys: pytest.CaptureFixture[str],
                                                          config: Path, key: str, text: str,
                                                          words: str) -> None:
    config.parent.mkdir(parents=True)
    config.write_text("# mine\ntorrent = true\n")
    err = error(capsys, "config", "set", key, text)
    assert f"setting {key} " in err and words in err
    assert config.read_text() == "# mine\ntorrent = true\n"


def test_every_key_is_covered() -> None:
    from treeseed.config import KEYS

    assert {k for k, *_ in VALID} == set(KEYS)
    assert {k for k, *_ in INVALID} == set(KEYS)
    assert {k for _, k, _ in BAD_FILES} == set(KEYS) | {"bogus"}


def test_unknown_keys_are_refused_by_every_action(capsys: pytest.CaptureFixture[str],
                                                  config: Path) -> None:
    for args in (("get", "torent"), ("set", "torent", "on"), ("unset", "torent")):
        err = error(capsys, "config", *args)
        assert "unknown setting 'torent'; the settings are: torrent, listen, peers" in err
    assert not config.exists()


# --------------------------------------------------------------------------- list, get, unset


def test_list_shows_every_setting_and_which_are_defaults(capsys: pytest.CaptureFixture[str],
                                                         config: Path) -> None:
    from treeseed.config import KEYS, PUBLIC_DHT_BOOTSTRAP

    lines = ok(capsys, "config", "list").splitlines()
    assert lines[0] == f"# {config}"
    assert [line.split(" = ")[0] for line in lines[1:]] == list(KEYS)
    assert all(line.endswith("  (default)") for line in lines[1:])
    assert "torrent = off  (default)" in lines and 'peers = ""  (default)' in lines
    assert f"dht_bootstrap = {','.join(PUBLIC_DHT_BOOTSTRAP)}  (default)" in lines

    ok(capsys, "config", "set", "torrent", "on")
    ok(capsys, "config", "set", "seed_delay", "0")
    lines = ok(capsys, "config", "list").splitlines()
    assert "torrent = on" in lines and "seed_delay = 0" in lines  # explicit, even when falsy
    assert "dht = on  (default)" in lines
    values = json.loads(ok(capsys, "config", "list", "--json"))
    assert list(values) == list(KEYS)
    assert values["torrent"] is True and values["seed_delay"] == 0 and values["peers"] == []
    assert values["dht_bootstrap"] == PUBLIC_DHT_BOOTSTRAP


def test_unset_returns_to_the_default(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    ok(capsys, "config", "set", "seed_delay", "5")
    ok(capsys, "config", "set", "lsd", "off")
    assert ok(capsys, "config", "unset", "seed_delay") == "seed_delay = 30  (default)\n"
    assert stored(config) == {"lsd": False}
    assert ok(capsys, "config", "get", "seed_delay") == "30\n"
    assert "it was not set" in ok(capsys, "config", "unset", "seed_delay")
    assert stored(config) == {"lsd": False}


def test_set_replaces_a_whole_list(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    ok(capsys, "config", "set", "peers", "127.0.0.1:1,127.0.0.1:2")
    ok(capsys, "config", "set", "peers", "127.0.0.1:3")
    assert stored(config) == {"peers": ["127.0.0.1:3"]}


def test_the_default_file_is_in_the_user_config_dir(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TREESEED_CONFIG", raising=False)  # XDG_CONFIG_HOME is the test's own
    out = ok(capsys, "config", "set", "upnp", "on")
    path = tmp_path / "xdg-config" / "treeseed" / "config.toml"
    assert out == f"upnp = on  ({path})\n"
    assert stored(path) == {"upnp": True}
    assert ok(capsys, "config", "list").splitlines()[0] == f"# {path}"


# --------------------------------------------------------------------------- a hand-edited file


HAND_WRITTEN = """\
# My treeseed settings.
# They apply to every project.

torrent = false  # not yet: on the train
seed_delay = 10

# Fetchers for schemes treeseed lacks.
[fetchers]
s3 = "my-s3-fetcher --region eu"  # the company bucket
"""


def test_set_and_unset_keep_comments_and_tables(capsys: pytest.CaptureFixture[str],
                                                config: Path) -> None:
    config.parent.mkdir(parents=True)
    config.write_text(HAND_WRITTEN)
    ok(capsys, "config", "set", "torrent", "on")
    ok(capsys, "config", "set", "peers", "127.0.0.1:7000")
    ok(capsys, "config", "unset", "seed_delay")
    text = config.read_text()
    for comment in ("# My treeseed settings.", "# They apply to every project.",
                    "# not yet: on the train", "# Fetchers for schemes treeseed lacks.",
                    "# the company bucket"):
        assert comment in text, text
    assert "torrent = true  # not yet: on the train" in text  # the value changed in place
    # A new top-level key must land before the first table, or TOML would put it inside it.
    assert stored(config) == {"torrent": True, "peers": ["127.0.0.1:7000"],
                              "fetchers": {"s3": "my-s3-fetcher --region eu"}}
    assert not list(config.parent.glob(".*"))  # written by rename: no temporary file left
    from treeseed.config import fetchers

    assert fetchers() == {"s3": "my-s3-fetcher --region eu"}


def test_set_creates_the_file_and_its_directories(capsys: pytest.CaptureFixture[str],
                                                  config: Path) -> None:
    assert not config.parent.exists()
    ok(capsys, "config", "set", "dht", "off")
    assert config.read_text() == "dht = false\n"


BAD_FILES = [
    # (file content, key the error names, words it contains)
    ('torrent = "yes"\n', "torrent", "expected true or false"),
    ("listen = 6881\n", "listen", "expected a string"),
    ('listen = "6881"\n', "listen", "is not host:port"),
    ('peers = "127.0.0.1:1"\n', "peers", "expected a list of strings"),
    ('peers = ["127.0.0.1:1", "x"]\n', "peers", "'x' is not host:port"),
    ("dht = 1\n", "dht", "expected true or false"),
    ('dht_bootstrap = ["router"]\n', "dht_bootstrap", "is not host:port"),
    ('lsd = "off"\n', "lsd", "expected true or false"),
    ("upnp = 0\n", "upnp", "expected true or false"),
    ('trackers = ["ftp://t"]\n', "trackers", "is not an http://, https:// or udp:// URL"),
    ("upload_limit = -5\n", "upload_limit", "expected a whole number, 0 or more"),
    ("download_limit = true\n", "download_limit", "expected a whole number"),
    ("download_limit = 1.5\n", "download_limit", "expected a whole number"),
    ('seed_delay = "3"\n', "seed_delay", "expected a number of seconds"),
    ("seed_delay = nan\n", "seed_delay", "expected a number of seconds"),
    ("seed_delay = inf\n", "seed_delay", "expected a number of seconds"),
    ('mirrors = ["mirror.example"]\n', "mirrors", "is not an http://, https:// or file:/// URL"),
    ('ipfs_gateways = ["gw.example"]\n', "ipfs_gateways", "is not an http:// or https:// gateway URL"),
    ("private = [1]\n", "private", "expected a list of strings"),
    ('private = ["bt2-123"]\n', "private", "neither a package name nor a bt2-<64 hex> hash"),
    ("share = 7\n", "share", "expected a list of strings"),
    ('torrent = true\nbogus = 1\n', "bogus", "unknown setting 'bogus'; the settings are: torrent"),
]


@pytest.mark.parametrize("text,key,words", BAD_FILES, ids=[k + ":" + t.strip() for t, k, _ in BAD_FILES])
def test_a_bad_value_in_the_file_is_an_error_naming_file_and_key(
        capsys: pytest.CaptureFixture[str], config: Path, text: str, key: str, words: str) -> None:
    config.parent.mkdir(parents=True)
    config.write_text(text)
    for args in (("config", "list"), ("config", "get", "torrent")):
        err = error(capsys, *args)
        assert err.startswith(f"treeseed: error: {config} (key '{key}'): "), err
        assert words in err
    if key != "bogus":  # the error's own advice works: `config set` repairs the file
        assert f"'treeseed config set {key} VALUE'" in err
        assert f"'treeseed config unset {key}'" in err
        error_free = ok(capsys, "config", "unset", key)
        assert error_free.startswith(f"{key} = ")
        ok(capsys, "config", "list")


def test_invalid_toml_is_an_error_naming_the_file(capsys: pytest.CaptureFixture[str],
                                                  config: Path) -> None:
    config.parent.mkdir(parents=True)
    config.write_text("torrent = [\n")
    for args in (("list",), ("get", "dht"), ("set", "dht", "off"), ("unset", "dht")):
        err = error(capsys, "config", *args)
        assert err.startswith(f"treeseed: error: {config}: invalid TOML"), err
    assert config.read_text() == "torrent = [\n"  # never rewritten


def test_an_unreadable_file_is_an_error_naming_it(capsys: pytest.CaptureFixture[str],
                                                  config: Path) -> None:
    config.mkdir(parents=True)  # a directory where the file should be
    err = error(capsys, "config", "list")
    assert err.startswith(f"treeseed: error: {config}: cannot read"), err


# --------------------------------------------------------------------------- the choice is kept


def test_torrent_on_is_kept_for_later_commands(tmp_path: Path) -> None:
    """`config set torrent on` in one process changes what `fetch bt2-...` does in the next;
    `--no-torrent` still turns it off for one command. The swarm here is loopback only."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\ndht = false\nlsd = false\nupnp = false\n'
                      "dht_bootstrap = []\n")
    env = {"TREESEED_CONFIG": str(config), "TREESEED_SWARM_STALL": "0.5"}
    cache = tmp_path / "cache"

    off = run_cli("fetch", HASH, cache=cache, env=env, check=False)
    assert off.returncode == 1 and "turn the swarm on" in off.stderr

    run_cli("config", "set", "torrent", "on", env=env)
    assert "torrent = true" in config.read_text()
    assert run_cli("config", "get", "torrent", env=env).stdout == "on\n"

    on = run_cli("fetch", HASH, cache=cache, env=env, check=False)
    assert on.returncode == 1, on.stderr
    assert f"swarm: swarm download of {HASH} gave up" in on.stderr  # the swarm was asked
    assert "Traceback" not in on.stderr

    again_off = run_cli("fetch", HASH, "--no-torrent", cache=cache, env=env, check=False)
    assert again_off.returncode == 1 and "turn the swarm on" in again_off.stderr
    assert not os.listdir(cache / "p")
