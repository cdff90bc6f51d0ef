"""``python -m deploy.k8s {generate [--check], render OVERLAY, check [OVERLAY...]}``.

generate   (re)write deploy/k8s/overlays/<name>/ from the profiles; --check: only report stale
render     print an overlay's manifests (``kubectl kustomize``), after checking it is current
images     tag the compose images of a profile with the pinned tags its overlays use (and
           --push REGISTRY: tag REGISTRY/<name>:<tag> and push)
check      stale overlays, then render + validate every overlay (or those named); exit 1 on any
           problem, one line each
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from deploy.k8s import generate, spec, validate


def _overlays(names: list[str]) -> list[spec.Overlay]:
    unknown = [n for n in names if n not in spec.OVERLAYS]
    if unknown:
        raise SystemExit(
            f"k8s: unknown overlay(s) {', '.join(unknown)}; known: {', '.join(spec.OVERLAYS)}"
        )
    return [spec.OVERLAYS[n] for n in names] if names else list(spec.OVERLAYS.values())


def images(profile: str, registry: str) -> int:
    """``docker tag`` the images compose built for ``profile`` to the overlay's pinned tags."""
    overlay = next((o for o in spec.OVERLAYS.values() if o.profile == profile), None)
    if overlay is None:
        print(f"k8s: no overlay uses profile {profile}", file=sys.stderr)
        return 1
    tags = generate.image_tags(overlay)
    for built, (name, tag) in tags:
        targets = [f"{name}:{tag}"] + ([f"{registry.rstrip('/')}/{name}:{tag}"] if registry else [])
        for target in targets:
            if target != built:
                subprocess.run(["docker", "tag", built, target], check=True)
            print(f"k8s: {built} -> {target}")
        if registry:
            subprocess.run(["docker", "push", targets[-1]], check=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.k8s", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write the overlays from their profiles")
    g.add_argument("--check", action="store_true", help="report stale overlays, write nothing")
    g.add_argument("overlays", nargs="*")
    r = sub.add_parser("render", help="print an overlay's manifests")
    r.add_argument("overlay")
    i = sub.add_parser("images", help="tag (and push) the images an overlay of PROFILE pulls")
    i.add_argument("--profile", required=True, help="profile name (env/<name>.env)")
    i.add_argument("--push", metavar="REGISTRY", default="", help="e.g. us-docker.pkg.dev/P/R")
    c = sub.add_parser("check", help="render and validate overlays offline")
    c.add_argument("overlays", nargs="*")
    args = p.parse_args(argv)

    if args.command == "generate":
        overlays = _overlays(args.overlays)
        problems = generate.stale(overlays) if args.check else generate.write(overlays)
        print(*problems, sep="\n", file=sys.stderr)
        if not problems:
            print(f"k8s: {len(overlays)} overlay(s) {'current' if args.check else 'written'}")
        return 1 if problems else 0
    if args.command == "render":
        overlay = _overlays([args.overlay])[0]
        problems = generate.stale([overlay])
        if problems:
            print(*problems, sep="\n", file=sys.stderr)
            return 1
        try:
            sys.stdout.write(validate.build(generate.OVERLAY_DIR / overlay.name))
        except validate.KustomizeError as exc:
            print(f"k8s: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "images":
        return images(args.profile, args.push)
    overlays = _overlays(args.overlays)
    problems = generate.stale(overlays)
    broken = {x.split(":")[0].split("/")[0] for x in problems}
    current = [o.name for o in overlays if o.name not in broken]
    for name, found in validate.check_overlays(current).items():
        problems += [f"{name}: {line}" for line in found]
        if not found:
            print(f"k8s: {name}: renders, every object valid")
    print(*problems, sep="\n", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
