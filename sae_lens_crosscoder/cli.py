"""`sae-lens-crosscoder` command line.

Each subcommand lives in the module that owns its concern; the module exposes
``configure_parser(parser)`` and ``run(args) -> int``. Modules are imported only when
their command runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from sae_lens_crosscoder.errors import CrosscoderUserError

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("sae_lens_crosscoder.runner", "train a crosscoder (or difference SAE) from a config"),
    "cache": ("sae_lens_crosscoder.caching", "write a paired activation cache from a config"),
    "analyze": ("sae_lens_crosscoder.analysis.command", "per-latent table, evals, examples, plots, report"),
    "label": ("sae_lens_crosscoder.labelling.command", "label latents with capability categories"),
    "shift": ("sae_lens_crosscoder.labelling.shift_command", "category shift between two labelled latent sets"),
    "diff": ("sae_lens_crosscoder.diffs.command", "run a registered diff end to end, or --list them"),
    "demo": ("sae_lens_crosscoder.demo", "the end-to-end diff on the built-in small model pair"),
}


def build_parser(modules: dict[str, object] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae-lens-crosscoder", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = (modules or {}).get(name)
        if module is not None:
            module.configure_parser(sub_parser)  # type: ignore[attr-defined]
        else:
            sub_parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = next((a for a in argv if not a.startswith("-")), None)
    modules: dict[str, object] = {}
    if command in COMMANDS:
        try:
            modules[command] = importlib.import_module(COMMANDS[command][0])
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("sae_lens_crosscoder"):
                raise
            print(f"error: the '{command}' command is not available in this install ({exc.name} is missing)", file=sys.stderr)
            return 2
    args = build_parser(modules).parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)  # type: ignore[attr-defined]
    except CrosscoderUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
