"""``treeseed config list | get | set | unset``: the user's settings (:mod:`treeseed.config`)."""

from __future__ import annotations

import argparse
import json

from .common import is_quiet


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    config = sub.add_parser("config", parents=[common], help="show and change settings")
    xsub = config.add_subparsers(metavar="ACTION")
    p = xsub.add_parser("list", parents=[common], help="every setting, its value and its default")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_config_list)
    p = xsub.add_parser("get", parents=[common], help="print one setting")
    p.add_argument("key")
    p.set_defaults(run=cmd_config_get)
    p = xsub.add_parser("set", parents=[common], help="change a setting (lists: comma-separated)")
    p.add_argument("key")
    p.add_argument("value")
    p.set_defaults(run=cmd_config_set)
    p = xsub.add_parser("unset", parents=[common], help="return a setting to its default")
    p.add_argument("key")
    p.set_defaults(run=cmd_config_unset)
    config.set_defaults(run=lambda a: config.print_help() or 2)


def cmd_config_list(args: argparse.Namespace) -> int:
    from ..config import KEYS, config_path, settings, show

    current = settings()
    if args.json:
        print(json.dumps({k: current.values[k] for k in KEYS}, indent=2))
        return 0
    print(f"# {config_path()}")
    for name in KEYS:
        value = show(name, current.values[name]) or '""'
        origin = "" if name in current.explicit else "  (default)"
        print(f"{name} = {value}{origin}")
    return 0


def cmd_config_get(args: argparse.Namespace) -> int:
    from ..config import key, settings, show

    key(args.key)
    print(show(args.key, settings().values[args.key]))
    return 0


def cmd_config_set(args: argparse.Namespace) -> int:
    from ..config import config_path, set_value, show

    value = set_value(args.key, args.value)
    if not is_quiet(args):
        print(f"{args.key} = {show(args.key, value)}  ({config_path()})")
    return 0


def cmd_config_unset(args: argparse.Namespace) -> int:
    from ..config import KEYS, show, unset

    removed = unset(args.key)
    if not is_quiet(args) and args.key in KEYS:
        default = show(args.key, KEYS[args.key].default) or '""'
        print(f"{args.key} = {default}  (default{'' if removed else '; it was not set'})")
    elif not is_quiet(args):
        print(f"removed the unknown setting {args.key}")
    return 0
