"""Validate rendered Kubernetes manifests against Kubernetes' own schemas.

Usage: ``python deploy/validate_manifests.py -k 1.30.0 -k 1.35.0 FILE...``
where each file holds the YAML documents ``helm template`` printed.  Every
document is checked with kubernetes-validate in strict mode (unknown fields
are errors), offline, against the schemas of each Kubernetes version given.

Kinds that are not part of Kubernetes (custom resources) have no schema
there.  They are skipped only when listed in :data:`CUSTOM_KINDS`, which
says so in the output; any other kind without a schema is an error, so that
a typo in ``apiVersion`` or ``kind`` is not waved through.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

CUSTOM_KINDS: dict[tuple[str, str], tuple[str, ...]] = {
    # Prometheus Operator's CRD: not in Kubernetes' schemas.  Only the
    # fields the chart relies on are checked here.
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("selector", "endpoints"),
}


def validate(documents: list[dict[str, Any]], version: str) -> list[str]:
    """Return one line per problem (empty if every document is valid)."""
    problems: list[str] = []
    for document in documents:
        kind = (document.get("apiVersion", "?"), document.get("kind", "?"))
        name = f"{kind[1]} {document.get('metadata', {}).get('name', '?')}"
        required = CUSTOM_KINDS.get(kind)
        if required is not None:
            spec = document.get("spec") or {}
            missing = [field for field in required if field not in spec]
            if missing:
                problems.append(f"{name}: spec lacks {', '.join(missing)}")
            else:
                print(f"  skipped {name}: {kind[0]} is a custom resource")
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name}: no schema for {kind[0]} in Kubernetes {version}")
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(part) for part in exc.path) or "(top)"
            problems.append(f"{name}: {path}: {exc.message}")
        else:
            print(f"  valid   {name}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Validate the files given; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-k", "--kubernetes-version", action="append", required=True, dest="versions"
    )
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    failed = False
    for path in args.files:
        with path.open(encoding="utf-8") as stream:
            documents = [doc for doc in yaml.safe_load_all(stream) if doc]
        for version in args.versions:
            print(f"{path} (Kubernetes {version}):")
            if not documents:
                print("  no manifests", file=sys.stderr)
                failed = True
            for problem in validate(documents, version):
                print(f"  INVALID {problem}", file=sys.stderr)
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
