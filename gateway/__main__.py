"""``python -m gateway --profile P``: serve the gateway with uvicorn (uvloop + httptools).

``python -m gateway hash-key`` reads a key on stdin and prints its ``sha256:`` form for the
keys file, so the file on disk never has to hold a usable secret.
"""

from __future__ import annotations

import argparse
import logging
import sys

from env.settings import EngineSettings, GatewaySettings, profile_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--profile", default=None, help="env/<name>.env, a name, or $PROFILE")
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gateway (default)")
    sub.add_parser("hash-key", help="print sha256:<hex> for a key read from stdin")
    args = parser.parse_args(argv)

    if args.command == "hash-key":
        from gateway.auth import hash_key

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
    import uvicorn

    from gateway.app import ConfigError, create_app
    from gateway.httpproto import GatewayHttpProtocol, Limits

    path = profile_path(args.profile)
    engine = EngineSettings.load(path)
    settings = GatewaySettings.load(path)
    try:
        app = create_app(path, engine=engine, settings=settings)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    from gateway.drain import DrainingServer

    limits = Limits(settings.max_head_bytes, settings.head_timeout_s, settings.body_timeout_s)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=GatewayHttpProtocol.configured(limits),  # httptools + head/body limits
        lifespan="on",
        access_log=False,  # no per-request logging on the token path; metrics cover it
        server_header=False,
        date_header=True,  # RFC 9110: an origin server with a clock sends Date (cached per second)
        log_level=args.log_level.lower(),
        timeout_keep_alive=30,
        backlog=4096,
        timeout_graceful_shutdown=5,  # after the drain: only idle or cut-off connections remain
    )
    # SIGTERM drains (gateway/drain.py): /health 503, new requests 503, held ones finish.
    DrainingServer(config, app, settings.drain_timeout_s).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
