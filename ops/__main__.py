"""``python -m ops``: the devops MCP server for a profile's stack.

    python -m ops [--profile cpu]                     stdio (what desktop assistants spawn)
    python -m ops --transport http [--port 8090]      streamable HTTP on loopback: /mcp

Read-only tools by default; OPS_ALLOW_ACTIONS=true enables the action tools. Settings: the
OPS_* keys (env/README.md) with the gateway's, engine's and warm-up's as fallbacks.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ops.config import OpsConfig
from ops.server import build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--profile", default=None, help="env/<name>.env, a name, or $PROFILE (default cpu)"
    )
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--host", default=None, help="HTTP listen address (default OPS_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default OPS_PORT, 8090)")
    args = p.parse_args(argv)
    try:
        config = OpsConfig.load(args.profile)
    except FileNotFoundError as exc:
        print(f"ops: {exc}", file=sys.stderr)
        return 2
    server = build(config)
    # stdout is the protocol channel under stdio: logs go to stderr only.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        host = args.host or config.ops.host
        port = args.port or config.ops.port
        print(
            f"ops: MCP over streamable HTTP at http://{host}:{port}/mcp",
            file=sys.stderr,
            flush=True,
        )
        server.run("streamable-http", host=host, port=port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
