"""``python -m gateway --profile P``: serve the gateway with uvicorn (uvloop + httptools).

``python -m gateway hash-key`` reads a key on stdin and prints its ``sha256:`` form for the
keys file, so the file on disk never has to hold a usable secret.

``GATEWAY_WORKERS=N`` (N > 1): this process becomes the supervisor of N worker processes on the
same port (``gateway/workers``), each started as ``python -m gateway worker``; N > 1 requires
``GATEWAY_STATE_URL`` (what the workers share) and refuses to start without it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from env.settings import EngineSettings, GatewaySettings, profile_path

if TYPE_CHECKING:
    import uvicorn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--profile", default=None, help="env/<name>.env, a name, or $PROFILE")
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gateway (default)")
    sub.add_parser("hash-key", help="print sha256:<hex> for a key read from stdin")
    worker = sub.add_parser("worker", help="one of GATEWAY_WORKERS (started by the supervisor)")
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--peers", required=True, help="the supervisor's directory")
    worker.add_argument("--parent", type=int, required=True, help="the supervisor's pid")
    args = parser.parse_args(argv)

    if args.command == "hash-key":
        from gateway.tenancy.auth import hash_key

        key = sys.stdin.readline().strip()
        if not key:
            print("no key on stdin", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO: never on the token path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from gateway.edge.app import ConfigError, create_app

    path = profile_path(args.profile)
    engine = EngineSettings.load(path)
    settings = GatewaySettings.load(path)
    try:
        app = create_app(path, engine=engine, settings=settings)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if args.command != "worker" and settings.workers > 1:
        if not settings.state_url.strip():
            print(f"gateway: GATEWAY_WORKERS={settings.workers} needs GATEWAY_STATE_URL (Redis): "
                  "without it each worker would enforce every limit again", file=sys.stderr)  # fmt: skip
            return 2
        return _supervise(args, settings)
    config = _server_config(app, settings, args.log_level)
    if args.command == "worker":
        from gateway.workers.worker import WorkerServer

        WorkerServer(
            config, app, settings.drain_timeout_s, index=args.index, workers=settings.workers,
            peers_dir=args.peers, parent_pid=args.parent,
        ).serve_forever()  # fmt: skip
        return 0
    from gateway.edge.drain import DrainingServer

    # SIGTERM drains (gateway/edge/drain.py): /health 503, new requests 503, held ones finish.
    DrainingServer(config, app, settings.drain_timeout_s).run()
    return 0


def _server_config(app: object, settings: GatewaySettings, log_level: str) -> uvicorn.Config:
    import uvicorn

    from gateway.edge.httpproto import GatewayHttpProtocol, Limits

    limits = Limits(settings.max_head_bytes, settings.head_timeout_s, settings.body_timeout_s)
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=GatewayHttpProtocol.configured(limits),  # httptools + head/body limits
        lifespan="on",
        access_log=False,  # no per-request logging on the token path; metrics cover it
        server_header=False,
        date_header=True,  # RFC 9110: an origin server with a clock sends Date (cached per second)
        log_level=log_level.lower(),
        timeout_keep_alive=30,
        backlog=4096,
        timeout_graceful_shutdown=5,  # after the drain: only idle or cut-off connections remain
    )


def _supervise(args: argparse.Namespace, settings: GatewaySettings) -> int:
    """The supervisor of ``GATEWAY_WORKERS`` workers (the configuration was checked once, here)."""
    import os

    from gateway.workers.supervisor import Supervisor, reserve_port

    try:
        held = reserve_port(settings.host, settings.port)
    except OSError as exc:
        print(f"gateway: cannot bind {settings.host}:{settings.port}: {exc.strerror or exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    me = os.getpid()
    base = [sys.executable, "-m", "gateway", "--log-level", args.log_level]
    if args.profile is not None:
        base += ["--profile", args.profile]

    def argv(index: int, peers: str) -> list[str]:
        return [*base, "worker", "--index", str(index), "--peers", peers, "--parent", str(me)]

    with held:
        return Supervisor(settings.workers, argv).run()


if __name__ == "__main__":
    sys.exit(main())
