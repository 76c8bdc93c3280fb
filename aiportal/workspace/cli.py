"""``aiportal workspace``: start the browser workspace on this machine.

Hook it into the main CLI with :func:`add_workspace_command`; ``python -m aiportal.workspace``
runs the same command on its own.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aiportal.errors import AIPortalError

DEFAULT_PORT = 8080


def configure_offscreen_rendering() -> str:
    """Pick VTK's render window before any is made; returns what was chosen.

    Without a display, VTK's wheels first try X and log "bad X server connection" before falling
    back to EGL; asking for EGL directly (Mesa's llvmpipe renders on the CPU) avoids that.
    ``VTK_DEFAULT_OPENGL_WINDOW`` set by the user wins.
    """
    if "VTK_DEFAULT_OPENGL_WINDOW" in os.environ:
        return os.environ["VTK_DEFAULT_OPENGL_WINDOW"]
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return "default (display)"
    os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"
    return "vtkEGLRenderWindow"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: only this machine can connect)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--open", dest="open_path", type=Path,
                        help="a volume file or DICOM folder to load at start")
    parser.add_argument("--export-dir", type=Path,
                        help="where DICOM SEG + SR are saved (default: ~/aiportal-exports)")
    parser.add_argument("--browser", action="store_true", help="open the workspace in the system browser")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host (the workspace has no login: anyone who can reach "
                             "the port sees the images)")


def add_workspace_command(subparsers) -> argparse.ArgumentParser:
    """Add ``workspace`` to the ``aiportal`` command's subparsers."""
    parser = subparsers.add_parser("workspace", help="start the browser workspace (trame-slicer) on this machine")
    add_arguments(parser)
    parser.set_defaults(handler=cmd_workspace)
    return parser


def cmd_workspace(args: argparse.Namespace) -> int:
    if not _is_loopback(args.host) and not args.allow_remote:
        raise AIPortalError(f"--host {args.host} would let other machines reach the workspace, which has no login",
                            "keep the default 127.0.0.1 (use an SSH tunnel from elsewhere), or pass --allow-remote")
    if args.open_path is not None and not args.open_path.exists():
        raise AIPortalError(f"{args.open_path} does not exist", "check the path given to --open")
    window = configure_offscreen_rendering()
    from aiportal.workspace.app import Workspace

    export_dir = args.export_dir or Path.home() / "aiportal-exports"
    workspace = Workspace(export_dir=export_dir, open_path=args.open_path)
    print(f"aiportal workspace: http://{args.host}:{args.port}/ (rendering: {window}; exports: {export_dir})",
          file=sys.stderr, flush=True)
    workspace.server.start(host=args.host, port=args.port, open_browser=args.browser, timeout=0,
                           show_connection_info=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiportal.workspace", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_workspace(args)
    except AIPortalError as error:
        print(f"aiportal: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
