"""The `multifcl` command: one subcommand per module, found by name in `SUBCOMMANDS`.

A subcommand module defines `SUMMARY` (one line), `EXAMPLES` (command lines shown under
its help), `add_arguments(parser)` and `run(args) -> int`; adding one means one line here. Bad input ends the command with one
line on stderr and exit status 2, before any long work (a run that fails: status 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS = {
    "analyze": "multifcl.analysis.command",
    "check-config": "multifcl.check_config",
    "compare": "multifcl.compare",
    "doctor": "multifcl.doctor",
    "report": "multifcl.reporting.report_command",
    "run": "multifcl.local_run",
}

DESCRIPTION = "Federated class-incremental learning runs: compare, report, analyze."
FIRST_STEPS = (
    "multifcl doctor",
    "multifcl run",
    "multifcl compare --methods prototypes finetune --seeds 0 1 --out runs/first-compare",
    "multifcl <command> --help",
)


class CommandError(Exception):
    """Bad input to a subcommand (exit status 2) or a failed run (1); printed as one line."""

    exit_status = 2


def examples_text(lines: Sequence[str]) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]) and run the chosen subcommand.

    Only the chosen subcommand's module is imported (all of them for the top-level help).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = argparse.ArgumentParser(
        prog="multifcl",
        description=DESCRIPTION,
        epilog=examples_text(FIRST_STEPS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if chosen not in (None, name):
            commands.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        command = commands.add_parser(
            name,
            help=module.SUMMARY,
            description=module.__doc__,
            epilog=examples_text(module.EXAMPLES),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    args = parser.parse_args(argv)
    from multifcl.config import ConfigError
    from multifcl.data import DataError

    try:
        return args.handler(args)
    except (CommandError, ConfigError, DataError) as error:
        print(f"multifcl {args.command}: {error}", file=sys.stderr)
        return getattr(error, "exit_status", 2)


if __name__ == "__main__":
    sys.exit(main())
