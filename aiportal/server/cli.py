"""Command-line face of the server: ``aiportal serve`` and ``aiportal server-key create|list|revoke``.

``add_serve_command(subparsers)`` adds both to the main ``aiportal`` parser; ``main()`` runs them
alone (``python -m aiportal.server``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiportal.errors import AIPortalError
from aiportal.server.roles import ROLES


def _settings(args: argparse.Namespace):
    from aiportal.server.settings import ServerSettings

    return ServerSettings.from_environment(
        data_dir=args.data_dir, database_url=args.database_url,
        **{key: getattr(args, key, None) for key in (
            "engine", "workers", "executor", "broker_url", "max_upload_mb", "max_bundle_mb", "rate_limit_per_minute",
            "max_attempts", "stale_after_s", "result_ttl_s", "job_timeout_s", "pacs_endpoint", "oidc_issuer",
            "oidc_jwks_url", "oidc_audience", "oidc_role_claim", "dispatch_rules")},
        deidentify=True if getattr(args, "deidentify", False) else None)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from aiportal.server.app import create_app

    if bool(args.tls_cert) != bool(args.tls_key):
        raise AIPortalError("--tls-cert and --tls-key go together", "give both, or neither (TLS at a reverse proxy)")
    settings = _settings(args)
    if args.weights_bundle:  # checked and installed before any worker starts; workers share the weights folder
        from aiportal.weights.cli import import_for_server

        import_for_server(args.weights_bundle)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    scheme = "https" if args.tls_cert else "http"
    print(f"aiportal server on {scheme}://{args.host}:{args.port} (engine {settings.engine}, "
          f"data {settings.data_dir}); API description at /openapi.json", file=sys.stderr, flush=True)
    # no access log: request lines would name every job and client; the app logs job ids only
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning",
                ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key, timeout_graceful_shutdown=5)
    return 0


def cmd_server_key(args: argparse.Namespace) -> int:
    from aiportal.server.auth import ApiKeyStore
    from aiportal.server.jobs import make_engine
    from aiportal.server.roles import role_scopes

    keys = ApiKeyStore(make_engine(_settings(args).db_url))
    if args.key_command == "create":
        if args.expires_days is not None and args.expires_days <= 0:
            raise AIPortalError(f"--expires-days {args.expires_days:g} would make a key that is already expired",
                                "give a positive number of days, or leave --expires-days out for no expiry")
        expires = args.expires_days * 86400.0 if args.expires_days is not None else None
        scopes = role_scopes(args.role) if args.role else [scope.strip() for scope in args.scopes.split(",")
                                                           if scope.strip()]
        key = keys.create(args.name, scopes, expires)
        print(key)
        print("store this key now: the server keeps only its hash", file=sys.stderr)
        return 0
    if args.key_command == "revoke":
        if not keys.revoke(args.key_id):
            raise AIPortalError(f"no API key {args.key_id!r}", "list the keys with `aiportal server-key list`")
        print(f"revoked {args.key_id}")
        return 0
    listing = [{"id": info.id, "name": info.name, "scopes": list(info.scopes), "revoked": info.revoked,
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created)),
                "expires": time.strftime("%Y-%m-%d %H:%M", time.localtime(info.expires)) if info.expires else "never"}
               for info in keys.list()]
    if args.json:
        print(json.dumps(listing, indent=2))
    for item in [] if args.json else listing:
        state = "revoked" if item["revoked"] else f"expires {item['expires']}"
        print(f"{item['id']}  {item['name']:<20} {','.join(item['scopes']):<24} {state}")
    return 0


def _storage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="uploads, results, SQLite database (default: "
                        "AIPORTAL_SERVER_DATA_DIR or ~/.local/share/aiportal/server)")
    parser.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/aiportal "
                                               "(default: SQLite in the data folder)")


def add_serve_command(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="run the remote inference server (HTTP API)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    _storage_arguments(serve)
    serve.add_argument("--engine", choices=["embedded", "celery"], help="embedded worker pool (default) or Celery")
    serve.add_argument("--workers", type=int, help="embedded worker threads (default 2)")
    serve.add_argument("--executor", choices=["process", "thread"], help="model in a child process (default) or thread")
    serve.add_argument("--broker-url", help="Celery broker, e.g. redis://127.0.0.1:6379/0 or amqp://...")
    serve.add_argument("--max-upload-mb", type=float)
    serve.add_argument("--max-bundle-mb", type=float, help="largest weights bundle an admin may upload (default 20480)")
    serve.add_argument("--rate-limit", dest="rate_limit_per_minute", type=int, help="requests per minute per client")
    serve.add_argument("--max-attempts", type=int, help="attempts of a job whose worker died before it fails")
    serve.add_argument("--stale-after", dest="stale_after_s", type=float, help="seconds without heartbeat = lost")
    serve.add_argument("--result-ttl", dest="result_ttl_s", type=float, help="seconds results are kept")
    serve.add_argument("--job-timeout", dest="job_timeout_s", type=float, help="model run time-out in seconds")
    serve.add_argument("--pacs", dest="pacs_endpoint", help="PACS endpoint name (see `aiportal pacs`) for UID jobs")
    serve.add_argument("--dispatch-rules", help="JSON rules: watch the PACS (Orthanc) and submit new series")
    serve.add_argument("--deidentify", action="store_true", help="de-identify DICOM inputs before processing")
    serve.add_argument("--oidc-issuer")
    serve.add_argument("--oidc-jwks-url")
    serve.add_argument("--oidc-audience")
    serve.add_argument("--oidc-role-claim", help="claim holding the roles, e.g. realm_access.roles")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS directly")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--weights-bundle", type=Path, help="import this weights bundle (`aiportal models pack`) "
                                                          "before serving; Celery workers read the same weights folder")
    serve.set_defaults(handler=cmd_serve)

    key = subparsers.add_parser("server-key", help="create, list or revoke the server's API keys")
    _storage_arguments(key)
    key_commands = key.add_subparsers(dest="key_command", required=True)
    create = key_commands.add_parser("create", help="a new key (printed once)")
    create.add_argument("name", help="who or what uses it, e.g. 'ct-workstation-3'")
    create.add_argument("--scopes", default="read,submit",
                        help="comma-separated: status, read, submit, review, audit, metrics, dashboard, admin")
    create.add_argument("--role", choices=tuple(ROLES),
                        help="a role instead of --scopes (see aiportal.server.roles)")
    create.add_argument("--expires-days", type=float, help="expiry (default: never)")
    listing = key_commands.add_parser("list", help="all keys (never the secrets)")
    listing.add_argument("--json", action="store_true")
    revoke = key_commands.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    key.set_defaults(handler=cmd_server_key, json=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiportal.server")
    add_serve_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except AIPortalError as error:
        print(f"aiportal: error: {error}", file=sys.stderr)
        return 1
