"""Run the Salesforce API emulator: ``python -m devstack.emulator serve --state-dir DIR``.

Once it listens it writes ``DIR/emulator.json`` with its URL, CA bundle and
credentials; whoever started it reads that file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import socket
from pathlib import Path

import uvicorn

from devstack.emulator.app import create_app
from devstack.emulator.certs import ensure_certificates
from devstack.emulator.org import Org


def serve(args: argparse.Namespace) -> None:
    state_dir = Path(args.state_dir).resolve()
    certificates = ensure_certificates(state_dir / "tls")
    org = Org(
        access_token=args.access_token or "00D" + secrets.token_urlsafe(24),
        client_id=args.client_id,
        client_secret=args.client_secret or secrets.token_urlsafe(16),
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    info = {
        "pid": os.getpid(),
        "url": f"https://{args.host}:{port}",
        "port": port,
        "ca_bundle": str(certificates.ca_bundle),
        "access_token": org.initial_token,
        "client_id": org.client_id,
        "client_secret": org.client_secret,
    }
    ready = state_dir / "emulator.json"
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.chmod(0o600)
    tmp.replace(ready)
    config = uvicorn.Config(
        create_app(org, state_file=state_dir / "org-state.json" if args.persist else None),
        ssl_certfile=str(certificates.certificate),
        ssl_keyfile=str(certificates.private_key),
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=1,
        timeout_keep_alive=30,
    )
    logging.getLogger(__name__).info("Salesforce emulator listening on %s", info["url"])
    uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.emulator")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve the emulated REST API over HTTPS on loopback")
    run.add_argument("--state-dir", required=True, help="where certificates and emulator.json go")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=0, help="0 picks a free port")
    run.add_argument("--access-token", help="the session id clients start with (default: random)")
    run.add_argument("--client-id", default="crm-export-local")
    run.add_argument("--client-secret", help="for the OAuth client credentials flow (default: random)")
    run.add_argument("--persist", action="store_true", help="keep records and rules in STATE_DIR across restarts")
    run.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    serve(args)


if __name__ == "__main__":
    main()
