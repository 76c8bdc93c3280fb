"""``aiportal models ...`` and ``aiportal doctor``.

``models`` lists models and environments (``setup``, ``import-weights``, ``totalseg-license`` as
before) and handles weights: ``install`` (licence and size shown, asked once; ``--yes`` for
scripts), ``pack`` / ``import`` (air-gapped bundles) and ``verify``. :func:`add_models_commands`
and :func:`add_doctor_command` hook them into the main parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from aiportal.errors import AIPortalError, InputError


def _progress():
    from aiportal.cli import TerminalProgress

    return TerminalProgress()


def _transfer(args: argparse.Namespace):
    from aiportal.weights.download import Transfer

    return Transfer(ca_bundle=args.ca_bundle, timeout=args.timeout)


def cmd_models_list(args: argparse.Namespace) -> int:
    from aiportal.models.catalog import get_catalog
    from aiportal.models.envs import ENVIRONMENTS, environment_status

    catalog = get_catalog()
    environments = {name: environment_status(name) for name in ENVIRONMENTS}
    if args.json:
        print(json.dumps({"models": [asdict(model) for model in catalog.models], "environments": environments,
                          "folder_models": catalog.sources}, indent=2))
        return 0
    width = max(len(model.id) for model in catalog.models) + 1
    for model in catalog.models:
        prompts = f"; prompts: {', '.join(model.prompts)}" if model.prompts else ""
        print(f"{model.id:<{width}} {model.modality:<4} {model.family:<9} {model.title}{prompts}")
    print("\nenvironments (models run in a child process with this Python):")
    for name, status in environments.items():
        users = ", ".join(sorted({m.id.split("-")[0] for m in catalog.models if m.environment == name}))
        print(f"  {name:<11} {status}   [{users or '-'}]")
    print("\nmodels from a folder (--model PREFIX:FOLDER):")
    for prefix, description in catalog.sources.items():
        print(f"  {prefix + ':FOLDER':<14} {description}")
    return 0


def cmd_models_legacy(args: argparse.Namespace) -> int:
    from aiportal.models.backends import totalsegmentator
    from aiportal.models.envs import setup_environment

    if args.models_command == "setup":
        python = setup_environment(args.environment, progress=_progress())
        print(f"environment {args.environment} ready: {python}")
    elif args.models_command == "totalseg-license":
        print(f"licence key stored in {totalsegmentator.set_license(args.key, args.home)}")
    else:
        for folder in totalsegmentator.import_weights(args.source, args.home):
            print(f"imported {folder}")
    return 0


def _ask(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise InputError("the install needs your consent to the licence and size above, and no one can answer here",
                         "run it again with --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_models_install(args: argparse.Namespace) -> int:
    from aiportal.weights.install import install, is_installed
    from aiportal.weights.manifest import manifest_for
    from aiportal.weights.offer import weights_present

    plans = [manifest_for(model_id, args.manifest) for model_id in args.models]
    if args.forget_pin:
        from aiportal.weights.pins import forget

        for weights in plans:
            for url in forget(weights):
                print(f"{weights.model_id}: forgot the sha256 pinned for {url}; the next download is trusted anew")
    todo = []
    for weights in plans:
        if args.force:
            todo.append(weights)
        elif is_installed(weights):
            print(f"{weights.model_id}: already installed ({weights.version})")
        elif weights_present(weights.model_id):  # e.g. imported by hand: no receipt, so `verify` cannot check it
            print(f"{weights.model_id}: weights already on disk (not installed by aiportal: add --force to install "
                  "them again with a receipt that `models verify` checks)")
        else:
            todo.append(weights)
    if not todo:
        return 0
    for weights in todo:
        size = f"{weights.size / 1e6:.0f} MB" if weights.size else "size unknown until the download starts"
        print(f"{weights.model_id} {weights.version}: {len(weights.artifacts)} file(s), {size}\n"
              f"  licence: {weights.license or 'see the publisher'}\n"
              + "".join(f"  from {a.origin}\n" for a in weights.artifacts), end="")
    if not _ask("Accept these licences and download?", args.yes):
        print("nothing installed")
        return 1
    for weights in todo:
        result = install(weights, transfer=_transfer(args), progress=_progress(), force=args.force,
                         totalseg_home=args.home)
        print(f"{weights.model_id}: installed into {', '.join(map(str, result.folders))}")
        for name in result.use_as:
            print(f"  segment with it: aiportal segment IMAGE --model {name}")
        if result.warning:
            print(f"aiportal: warning: {weights.model_id}: {result.warning}", file=sys.stderr)
    return 0


def cmd_models_pack(args: argparse.Namespace) -> int:
    from aiportal.weights.bundle import pack

    document = pack(args.models, args.out, manifest=args.manifest, transfer=_transfer(args), progress=_progress())
    total = sum(a["size"] for m in document["models"].values() for a in m["artifacts"])
    print(f"{args.out}: {len(document['models'])} model(s), {total / 1e6:.1f} MB; on the isolated machine: "
          f"`aiportal models import {args.out.name}`")
    return 0


def cmd_models_import(args: argparse.Namespace) -> int:
    from aiportal.weights.bundle import import_bundle

    for result in import_bundle(args.bundle, models=args.models or None, progress=_progress(), force=args.force,
                                totalseg_home=args.home):
        where = "already installed" if result.already else f"installed into {', '.join(map(str, result.folders))}"
        print(f"{result.model_id}: {where} (sha256 checked against the bundle)")
        for name in result.use_as:
            print(f"  segment with it: aiportal segment IMAGE --model {name}")
    return 0


def import_for_server(bundle: Path) -> list[str]:
    """``aiportal serve --weights-bundle FILE``: install the bundle's models (checked) before the server starts."""
    from aiportal.weights.bundle import import_bundle
    from aiportal.weights.store import weights_dir

    models = [result.model_id for result in import_bundle(bundle)]
    print(f"weights bundle {bundle.name}: {', '.join(models)} ready in {weights_dir()} (workers on other hosts need "
          "this folder and TOTALSEG_HOME_DIR shared, or the same bundle imported there)", file=sys.stderr, flush=True)
    return models


def cmd_models_verify(args: argparse.Namespace) -> int:
    from aiportal.weights.verify import verify

    checks = verify(args.models or None, embedded=not args.models)
    if args.json:
        print(json.dumps([asdict(check) for check in checks], indent=2))
    else:
        for check in checks:
            print(check.line())
        if not checks:
            print("no weights installed (see `aiportal models install`)")
    return 0 if all(check.ok for check in checks) else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from aiportal.weights.doctor import diagnose

    findings = diagnose(check_weights=not args.quick)
    if args.json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for finding in findings:
            print(finding.line())
        problems = sum(not f.ok for f in findings)
        print(f"\n{problems} problem(s)" if problems else "\nall ok")
    return 0 if all(f.ok for f in findings) else 1


def _network_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, help="a weights manifest (JSON) adding or overriding download "
                                                      "entries (also AIPORTAL_WEIGHTS_MANIFEST)")
    parser.add_argument("--ca-bundle", help="a CA certificate file (PEM) to trust as well, e.g. the hospital "
                                            "proxy's (also AIPORTAL_CA_BUNDLE); proxies come from HTTPS_PROXY")
    parser.add_argument("--timeout", type=float, help="seconds without data before a download gives up "
                                                      "(default 60; AIPORTAL_DOWNLOAD_TIMEOUT)")


def add_models_commands(commands) -> None:
    """``aiportal models [list|setup|import-weights|totalseg-license|install|pack|import|verify]``."""
    models = commands.add_parser("models", help="list models; set environments up; install, pack, import and "
                                                "verify weights")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=cmd_models_list)
    sub = models.add_subparsers(dest="models_command")
    listing = sub.add_parser("list", help="list models (the default)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_models_list)
    setup = sub.add_parser("setup", help="create a model environment (its own venv)")
    setup.add_argument("environment", help="environment name (see `aiportal models`)")
    weights = sub.add_parser("import-weights", help="import TotalSegmentator weights downloaded on another machine")
    weights.add_argument("source", type=Path, help="a weights zip or an extracted dataset folder")
    weights.add_argument("--home", type=Path, help="TotalSegmentator home (default: AIPORTAL_TOTALSEG_HOME, "
                                                   "TOTALSEG_HOME_DIR or ~/.totalsegmentator)")
    license_ = sub.add_parser("totalseg-license", help="store a TotalSegmentator licence key")
    license_.add_argument("key")
    license_.add_argument("--home", type=Path)
    for parser in (setup, weights, license_):
        parser.set_defaults(handler=cmd_models_legacy)

    install = sub.add_parser("install", help="download, check and install model weights from their publisher")
    install.add_argument("models", nargs="+", metavar="MODEL")
    install.add_argument("--yes", "-y", action="store_true", help="accept the licences and size without asking")
    install.add_argument("--force", action="store_true", help="install again even when installed")
    install.add_argument("--home", type=Path, help="TotalSegmentator home (default as for import-weights)")
    install.add_argument("--forget-pin", action="store_true", help="drop the sha256 pinned at the first download of "
                                                                   "files without a published one (a re-release)")
    _network_arguments(install)
    install.set_defaults(handler=cmd_models_install)
    pack = sub.add_parser("pack", help="write one bundle file with the weights of MODELs (for an air-gapped site)")
    pack.add_argument("models", nargs="+", metavar="MODEL")
    pack.add_argument("--out", type=Path, required=True, help="the bundle file to write (.tar)")
    _network_arguments(pack)
    pack.set_defaults(handler=cmd_models_pack)
    import_ = sub.add_parser("import", help="check and install the weights of a bundle from `models pack`")
    import_.add_argument("bundle", type=Path)
    import_.add_argument("models", nargs="*", metavar="MODEL", help="only these (default: all in the bundle)")
    import_.add_argument("--force", action="store_true")
    import_.add_argument("--home", type=Path, help="TotalSegmentator home")
    import_.set_defaults(handler=cmd_models_import)
    verify = sub.add_parser("verify", help="re-hash installed weights and name every file that changed")
    verify.add_argument("models", nargs="*", metavar="MODEL")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=cmd_models_verify)


def add_doctor_command(commands) -> None:
    doctor = commands.add_parser("doctor", help="check Python, torch/CUDA, GPU, memory, disk, environments, "
                                                "weights and services; each problem with its fix")
    doctor.add_argument("--json", action="store_true")
    doctor.add_argument("--quick", action="store_true", help="skip re-hashing installed weights")
    doctor.set_defaults(handler=cmd_doctor)


def main(argv: list[str] | None = None) -> int:  # `python -m aiportal.weights.cli ...`
    from aiportal.cli import main as aiportal_main

    return aiportal_main(["models", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AIPortalError as error:
        print(f"aiportal: error: {error}", file=sys.stderr)
        sys.exit(1)
