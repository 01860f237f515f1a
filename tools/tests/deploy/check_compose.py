"""Checks the resolved Compose configuration (`docker-compose config` output on
stdin) for what the deploy guide promises, beyond what the schema checks:

- jimbus services build from the repository's Dockerfile, run with the io_uring
  seccomp profile and an unlimited memlock ulimit, and have a healthcheck;
- jimbus-nats runs with --bus on the three NATS services;
- every other image is an official one, pinned to a version;
- every service has a healthcheck, is on the isolated `jimbus` network, and
  publishes ports on the configured bind address only;
- data lives in named volumes; bind mounts are read-only config files that exist;
- the profiles hold what the README says.

    docker-compose --profile nats --profile learning config | python check_compose.py COMPOSE_DIR
"""

import pathlib
import sys

import yaml

OFFICIAL = ("nats:", "prom/prometheus:", "grafana/grafana:", "redis:", "eventstore/eventstore:")
PROFILES = {
    "jimbus": None,
    "prometheus": None,
    "grafana": None,
    "jimbus-nats": "nats",
    "nats-0": "nats",
    "nats-1": "nats",
    "nats-2": "nats",
    "redis": "learning",
    "eventstore": "learning",
}


def normalise_volume(volume):
    """docker-compose v1 prints `src:dst:mode`, Compose v2 the long syntax."""
    if isinstance(volume, dict):
        return volume
    source, target, *mode = volume.split(":")
    kind = "bind" if source.startswith(("/", ".")) else "volume"
    return {"type": kind, "source": source, "target": target, "read_only": mode == ["ro"]}


def check(config, compose_dir):
    errors = []
    services = config.get("services", {})
    if set(services) != set(PROFILES):
        errors.append(f"services are {sorted(services)}, expected {sorted(PROFILES)}")
    named_volumes = set(config.get("volumes", {}))
    for name, service in services.items():
        where = f"service {name}"
        profiles = service.get("profiles", [])
        expected = PROFILES.get(name)
        if (expected is None and profiles) or (expected is not None and profiles != [expected]):
            errors.append(f"{where}: profiles {profiles}, expected {expected or 'none'}")
        if "healthcheck" not in service or not service["healthcheck"].get("test"):
            errors.append(f"{where}: no healthcheck")
        if list(service.get("networks", {})) != ["jimbus"]:
            errors.append(f"{where}: networks {list(service.get('networks', {}))}, expected only jimbus")
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            if host_ip != "127.0.0.1":
                errors.append(f"{where}: port {port} is not bound to BIND_ADDRESS (127.0.0.1 by default)")
        for volume in map(normalise_volume, service.get("volumes", [])):
            if volume["type"] == "volume":
                if volume["source"] not in named_volumes:
                    errors.append(f"{where}: volume {volume['source']} is not declared")
            elif volume["type"] == "bind":
                if not volume.get("read_only"):
                    errors.append(f"{where}: bind mount {volume['source']} is writable; data belongs in named volumes")
                if not pathlib.Path(volume["source"]).exists():
                    errors.append(f"{where}: bind mount source {volume['source']} does not exist")
            else:
                errors.append(f"{where}: volume type {volume['type']}")
        if name.startswith("jimbus"):
            build = service.get("build", {})
            if pathlib.Path(build.get("context", "")).resolve() != (compose_dir / "../..").resolve():
                errors.append(f"{where}: builds from {build.get('context')}, not the repository root")
            if build.get("dockerfile", "Dockerfile") != "Dockerfile":
                errors.append(f"{where}: dockerfile {build.get('dockerfile')}")
            if not any(str(o).startswith("seccomp") and "io_uring.json" in str(o) for o in service.get("security_opt", [])):
                errors.append(f"{where}: no io_uring seccomp profile in security_opt {service.get('security_opt')}")
            memlock = service.get("ulimits", {}).get("memlock", {})
            if memlock not in ({"soft": -1, "hard": -1}, -1):
                errors.append(f"{where}: memlock ulimit {memlock}, expected unlimited (-1)")
        else:
            image = service.get("image", "")
            if not image.startswith(OFFICIAL) or image.endswith(":latest") or ":" not in image:
                errors.append(f"{where}: image {image!r} is not an official image pinned to a version")
    nats = services.get("jimbus-nats", {})
    command = " ".join(nats.get("command", []))
    for node in ("nats-0", "nats-1", "nats-2"):
        if f"nats://{node}:4222" not in command:
            errors.append(f"jimbus-nats: --bus does not name {node} ({command})")
        if nats.get("depends_on", {}).get(node, {}).get("condition") != "service_healthy":
            errors.append(f"jimbus-nats: does not wait for {node} to be healthy")
    if config.get("networks", {}).get("jimbus", {}).get("driver") != "bridge":
        errors.append("network jimbus: not a bridge network of its own")
    return errors


def main():
    compose_dir = pathlib.Path(sys.argv[1]).resolve()
    config = yaml.safe_load(sys.stdin)
    errors = check(config, compose_dir)
    for error in errors:
        print(f"check_compose: {error}", file=sys.stderr)
    print(f"check_compose: {len(config.get('services', {}))} services, {len(errors)} problems")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
