"""Validates every manifest under deploy/kubernetes.

Each document is checked against the Kubernetes schemas that kubernetes-validate
ships (strict: unknown fields fail, offline), ServiceMonitors against
servicemonitor.schema.json beside this file (no CRD schemas ship), and then
the wiring that schemas cannot see: Services select pods that exist and name
their ports, probes hit /ready and /health, pods use the Localhost seccomp
profile that the installer writes, StatefulSets claim a volume per pod, and
resources are Guaranteed for jimbus. Exit 1 with every problem listed.

    python tools/tests/deploy/validate_k8s.py deploy/kubernetes
"""

import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
K8S_VERSION = "1.31.0"  # oldest version the manifests target (unhealthyPodEvictionPolicy is GA in 1.31)


def load(root):
    docs = []
    for path in sorted(root.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.relative_to(root), doc))
    return docs


def schema_errors(docs):
    monitor = json.loads((HERE / "servicemonitor.schema.json").read_text())
    errors = []
    for path, doc in docs:
        name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") == "ServiceMonitor":
            for e in jsonschema.Draft202012Validator(monitor).iter_errors(doc):
                errors.append(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
            continue
        for version in (K8S_VERSION, kubernetes_validate.latest_version()):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{name} (k8s {version}): {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{name}: no schema ({e})")
    return errors


def pod_specs(docs):
    for path, doc in docs:
        if doc.get("kind") in ("StatefulSet", "Deployment", "DaemonSet"):
            yield path, doc, doc["spec"]["template"]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def wiring_errors(docs):
    errors = []
    installed_profiles = set()
    for _, doc in docs:
        if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "jimbus-seccomp":
            for key, text in doc["data"].items():
                json.loads(text)  # the profile must be JSON
                installed_profiles.add(f"profiles/{key}")
    pods = list(pod_specs(docs))
    for path, doc in docs:
        kind, name = doc.get("kind"), doc["metadata"]["name"]
        if kind == "Service" and doc["spec"].get("selector"):
            selected = [t for _, _, t in pods if matches(doc["spec"]["selector"], t["metadata"]["labels"])]
            if not selected:
                errors.append(f"{path}: Service {name} selects no pod template")
            names = {p["name"] for t in selected for c in t["spec"]["containers"] for p in c.get("ports", [])}
            for port in doc["spec"]["ports"]:
                target = port.get("targetPort")
                if isinstance(target, str) and target not in names:
                    errors.append(f"{path}: Service {name} targets port {target!r}, pods have {sorted(names)}")
        if kind == "ServiceMonitor":
            wanted = doc["spec"]["selector"]["matchLabels"]
            services = [d for _, d in docs if d.get("kind") == "Service" and matches(wanted, d["metadata"].get("labels", {}))]
            if not services:
                errors.append(f"{path}: ServiceMonitor {name} selects no Service")
            for endpoint in doc["spec"]["endpoints"]:
                if not any(p.get("name") == endpoint["port"] for s in services for p in s["spec"]["ports"]):
                    errors.append(f"{path}: ServiceMonitor {name} scrapes port {endpoint['port']!r} no selected Service has")
        if kind in ("StatefulSet", "Deployment"):
            selector = doc["spec"]["selector"]["matchLabels"]
            if not matches(selector, doc["spec"]["template"]["metadata"]["labels"]):
                errors.append(f"{path}: {kind} {name}: selector does not match its pod template")
        if kind == "StatefulSet" and not doc["spec"].get("volumeClaimTemplates"):
            errors.append(f"{path}: StatefulSet {name} has no volumeClaimTemplates (one claim per pod)")
    for path, doc, template in pods:
        spec = template["spec"]
        for container in spec["containers"]:
            if not container["image"].startswith("jimbus:"):
                continue
            name = f"{path}: {doc['metadata']['name']}/{container['name']}"
            if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/ready":
                errors.append(f"{name}: readinessProbe must GET /ready")
            if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/health":
                errors.append(f"{name}: livenessProbe must GET /health")
            profile = spec.get("securityContext", {}).get("seccompProfile", {})
            if profile.get("type") != "Localhost" or profile.get("localhostProfile") not in installed_profiles:
                errors.append(f"{name}: seccompProfile {profile} is not a Localhost profile the installer writes {sorted(installed_profiles)}")
            resources = container.get("resources", {})
            if resources.get("requests") != resources.get("limits") or "memory" not in resources.get("limits", {}):
                errors.append(f"{name}: requests must equal limits (Guaranteed QoS, pinned shards)")
            env = {e["name"] for e in container.get("env", [])}
            for required in ("JIMBUS_HTTP", "JIMBUS_GRPC", "JIMBUS_SHARDS", "JIMBUS_MEMORY_BUDGET"):
                if required not in env:
                    errors.append(f"{name}: {required} is not set")
    return errors


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/kubernetes")
    docs = load(root)
    if not docs:
        sys.exit(f"no manifests under {root}")
    errors = schema_errors(docs) + wiring_errors(docs)
    for error in errors:
        print(f"validate_k8s: {error}", file=sys.stderr)
    kinds = sorted({d["kind"] for _, d in docs})
    print(f"validate_k8s: {len(docs)} manifests ({', '.join(kinds)}), {len(errors)} problems")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
