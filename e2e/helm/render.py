#!/usr/bin/env python3
"""Lints and renders the swarmseed Helm chart with the real Helm engine.

Uses the `helm-python-sdk` package (import name `helm_python`): Helm's Go SDK
as a C library, so no `helm` binary is needed. Installed by e2e/setup.sh.

    e2e/helm/render.py [--chart charts/swarmseed] [-f values.yaml ...]
                       [--release swarmseed] [--namespace swarmseed-system]
                       [--out DIR]
    e2e/helm/render.py --action install|upgrade|uninstall --kubeconfig FILE
                       [-f values.yaml ...] [--release ...] [--namespace ...]

The first form (--action render, the default) lints and renders offline.
Writes to --out (when given):
  crds.yaml       the chart's crds/ documents, as `helm install` creates them first
  manifests.yaml  the rendered templates, one document per object, in Helm's
                  install order (what `helm install` would send)
  NOTES.txt       the rendered notes

Prints one JSON report on stdout: chart metadata, Helm SDK version, the lint
report, and every CRD and rendered object as parsed JSON. Exits 1 when the
lint reports an error or rendering fails, 2 when helm_python is missing.

The other actions run the real `helm install` / `helm upgrade` / `helm
uninstall` against the cluster in --kubeconfig (no waiting for readiness) and
print the release as JSON; a failure prints the error and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

try:
    import helm_python as helm
except ImportError as exc:  # pragma: no cover - depends on the machine
    print(
        f"render.py: cannot import helm_python ({exc}); run e2e/setup.sh "
        "(pip install helm-python-sdk)",
        file=sys.stderr,
    )
    sys.exit(2)

# Helm's install order (pkg/release/v1/util/kind_sorter.go, InstallOrder).
# Kinds not listed come after these, ordered by kind, as Helm does.
INSTALL_ORDER = [
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
]

# Helm's own document separator (pkg/release/v1/util/manifest.go).
SEPARATOR = re.compile(r"(?:^|\s*\n)---\s*")

LINT_ERROR = 3


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`-f a.yaml -f b.yaml`: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_values(paths: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            values = deep_merge(values, helm.values_from_yaml(f.read()) or {})
    return values


def split_documents(text: str) -> list[tuple[dict[str, Any], str]]:
    """The objects of a multi-document YAML stream with their source text
    (empty and comment-only documents dropped).

    Every Kubernetes object is a YAML map, so Helm's values parser (a YAML to
    JSON conversion in Go) parses each document without another dependency.
    """
    objects = []
    for doc in SEPARATOR.split(text):
        if not doc.strip():
            continue
        obj = helm.values_from_yaml(doc)
        if obj:
            objects.append((obj, doc.strip("\n")))
    return objects


def install_rank(obj: dict[str, Any]) -> tuple[int, str, str]:
    kind = str(obj.get("kind", ""))
    name = str(obj.get("metadata", {}).get("name", ""))
    try:
        return (INSTALL_ORDER.index(kind), "", name)
    except ValueError:
        return (len(INSTALL_ORDER), kind, name)


def to_yaml_stream(documents: list[str]) -> str:
    return "".join(f"---\n{d}\n" for d in documents)


def release_action(args: argparse.Namespace, values: dict[str, Any]) -> int:
    """A real Helm release operation: CRDs from crds/ first (skipped when
    present), `lookup` against the live cluster, the release record in a
    Secret, objects applied in install order."""
    if not args.kubeconfig:
        print("render.py: --action needs --kubeconfig", file=sys.stderr)
        return 1
    try:
        with helm.Config(namespace=args.namespace, kubeconfig_path=args.kubeconfig) as cfg:
            if args.action == "install":
                release: Any = cfg.install(
                    args.chart, args.release, values, namespace=args.namespace,
                    timeout=args.timeout,
                )
            elif args.action == "upgrade":
                release = cfg.upgrade(
                    args.chart, args.release, values, namespace=args.namespace,
                    timeout=args.timeout,
                )
            else:
                release = cfg.uninstall(args.release, timeout=args.timeout)
    except helm.HelmError as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}, indent=2))
        return 1
    print(json.dumps(release if release is not None else {}, indent=2, default=str))
    return 0


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chart", default=os.path.join(repo, "charts", "swarmseed"))
    p.add_argument("-f", "--values", action="append", default=[], help="values file (repeatable)")
    p.add_argument("--release", default="swarmseed")
    p.add_argument("--namespace", default="swarmseed-system")
    p.add_argument("--out", help="directory for crds.yaml, manifests.yaml and NOTES.txt")
    p.add_argument(
        "--action", choices=["render", "install", "upgrade", "uninstall"], default="render"
    )
    p.add_argument("--kubeconfig", help="cluster of install/upgrade/uninstall")
    p.add_argument("--timeout", type=int, default=60, help="seconds (install/upgrade/uninstall)")
    args = p.parse_args()

    values = load_values(args.values)
    if args.action != "render":
        return release_action(args, values)
    report: dict[str, Any] = {
        "helm_sdk": helm.helm_sdk_version(),
        "values_files": args.values,
    }

    # Strict lint: warnings fail too.
    lint = helm.lint(args.chart, values, namespace=args.namespace, strict=True)
    report["lint"] = lint
    lint_errors = list(lint.get("errors") or []) + [
        f"{m.get('path')}: {m.get('error')}"
        for m in lint.get("messages") or []
        if m.get("severity", 0) >= LINT_ERROR
    ]
    report["lint_errors"] = lint_errors

    try:
        with helm.Chart.load(args.chart) as chart:
            report["chart"] = chart.metadata
            chart.validate_schema(values)
            rendered = chart.render(
                values, name=args.release, namespace=args.namespace, is_install=True
            )
            crds = [
                {"filename": c["filename"], "object": obj, "text": text}
                for c in chart.crds
                for obj, text in split_documents(c["data"])
            ]
    except helm.HelmError as exc:
        report["render_error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(report, indent=2))
        return 1

    notes = ""
    documents: list[tuple[dict[str, Any], str]] = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            notes = text
        elif not os.path.basename(template).startswith("_"):
            documents.extend(split_documents(text))
    documents.sort(key=lambda d: install_rank(d[0]))
    report["crds"] = [{"filename": c["filename"], "object": c["object"]} for c in crds]
    report["objects"] = [obj for obj, _ in documents]
    report["notes"] = notes

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "crds.yaml"), "w", encoding="utf-8") as f:
            f.write(to_yaml_stream([c["text"] for c in crds]))
        with open(os.path.join(args.out, "manifests.yaml"), "w", encoding="utf-8") as f:
            f.write(to_yaml_stream([text for _, text in documents]))
        with open(os.path.join(args.out, "NOTES.txt"), "w", encoding="utf-8") as f:
            f.write(notes)

    print(json.dumps(report, indent=2))
    return 1 if lint_errors else 0


if __name__ == "__main__":
    sys.exit(main())
