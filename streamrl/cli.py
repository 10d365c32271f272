"""The `streamrl` command. Each subcommand lives in `streamrl/commands/<name>.py` with
`add_arguments(parser)` and `run(args) -> int`; modules load only when their command runs, so
`streamrl --help` stays fast (no torch import)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> one-line help; the module is streamrl.commands.<name>
COMMANDS: dict[str, str] = {
    "run": "run an RL recipe: trainer and producers as local processes over the log",
    "demo": "write a demo run's streams to the log and read them back (no model needed)",
    "tail": "print a stream's events or trajectories as a table",
    "inspect": "summarize a run: its streams, events, trajectories and dead letters",
    "replay": "reproduce a run bit-exactly from its log, or re-train it under another policy",
    "compare": "compare runs side by side: rewards, samples, staleness (table and PNG)",
    "audit": "check a run's lineage: exactly-once training, staleness, versions, digests",
    "staleness": "a run's staleness: lag histograms, drops by reason, throughput; PNG + JSON",
    "rereward": "re-score a run's recorded trajectories with another reward function (new run)",
    "export": "copy a run into a folder of its own: streams, positions, files, Parquet samples",
    "import": "make a run exported with `streamrl export` a run again (file log or Kafka)",
    "up": "start a run in the background: docker compose (Kafka, trainer, producers) or --local",
    "down": "stop a run started with `streamrl up`",
    "ps": "list a run's processes and their status",
    "scale": "change the number of producers of a running run (local, Ray or compose)",
    "plan": "parameters, memory per GPU and traffic of a recipe's placement (config.json only)",
    "top": "a live view of a running run: versions/s, reward, staleness, producers, tok/s",
}

DEFAULT_LOG = "runs/log"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrl",
        description="Event-sourced streaming RL post-training for LLMs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--log",
            default=os.environ.get("STREAMRL_LOG", DEFAULT_LOG),
            help="log URL: a path or file://PATH (embedded default), kafka://HOST:PORT, "
            f"memory:// (env STREAMRL_LOG; default {DEFAULT_LOG})",
        )
        if name == chosen:
            module = importlib.import_module(f"streamrl.commands.{name}")
            module.add_arguments(p)
            p.set_defaults(module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
