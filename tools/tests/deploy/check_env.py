"""Every JIMBUS_* variable a deploy file gives the server must be one that
`jimbus serve --help` lists, so a typo cannot silently fall back to a default.

    python check_env.py JIMBUS_BIN RESOLVED_COMPOSE_YAML

Reads the jimbus services' `environment` of the resolved compose file, the
env of every container running the jimbus image in deploy/kubernetes, and the
Environment= lines of deploy/systemd/jimbus.service. Also checks that the
Prometheus and Grafana files the compose file mounts point at its services.
"""

import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]


def server_env(binary):
    text = subprocess.run([binary, "serve", "--help"], check=True, capture_output=True, text=True).stdout
    return set(re.findall(r"\[env: (JIMBUS_[A-Z0-9_]+)=", text))


def deploy_env(compose):
    found = []
    for name, service in compose["services"].items():
        if name.startswith("jimbus"):
            found += [(f"compose {name}", k) for k in service.get("environment", {}) if k.startswith("JIMBUS_")]
    for path in sorted((ROOT / "deploy/kubernetes").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            template = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in template.get("containers", []):
                if container["image"].startswith("jimbus:"):
                    found += [(str(path.relative_to(ROOT)), e["name"]) for e in container.get("env", [])]
    unit = (ROOT / "deploy/systemd/jimbus.service").read_text()
    found += [("deploy/systemd/jimbus.service", k) for k in re.findall(r"^Environment=(JIMBUS_[A-Z0-9_]+)=", unit, re.M)]
    return found


def monitoring_targets(compose):
    """Prometheus's jimbus targets and Grafana's datasource name compose services and ports."""
    errors = []
    services = compose["services"]
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for job in prometheus.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            for target in static.get("targets", []):
                host, port = target.rsplit(":", 1)
                if host == "localhost":
                    continue
                if host not in services:
                    errors.append(f"prometheus.yml scrapes {target}: no compose service {host}")
                elif host.startswith("jimbus") and services[host]["environment"].get("JIMBUS_HTTP", "").rsplit(":", 1)[-1] != port:
                    errors.append(f"prometheus.yml scrapes {target}, but {host} listens on {services[host]['environment'].get('JIMBUS_HTTP')}")
    datasources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    for source in datasources.get("datasources", []):
        host = re.match(r"https?://([^:/]+)", source["url"]).group(1)
        if host not in services:
            errors.append(f"Grafana datasource {source['url']}: no compose service {host}")
    return errors


def main():
    binary, compose_file = sys.argv[1:3]
    known = server_env(binary)
    if len(known) < 10:
        sys.exit(f"check_env: only {len(known)} variables in `serve --help`")
    compose = yaml.safe_load(open(compose_file))
    found = deploy_env(compose)
    errors = [f"{where}: {name} is not a variable of jimbus serve" for where, name in found if name not in known]
    errors += monitoring_targets(compose)
    for error in errors:
        print(f"check_env: {error}", file=sys.stderr)
    print(f"check_env: {len(found)} JIMBUS_* settings in deploy files, {len(errors)} problems")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
