"""Starts the real server with the environment each deploy file gives it, and
checks that it becomes ready and drains on SIGTERM with status 0: a value a
flag refuses (a bad fsync mode, a budget that is not a number) fails here.

    python run_envs.py JIMBUS_BIN RESOLVED_COMPOSE_YAML

Environments: the compose services `jimbus` and the Kubernetes StatefulSet's
container. Addresses move to free loopback ports and the data directory to a
temporary one; a value taken from the pod (JIMBUS_SHARDS from limits.cpu) is
given as Kubernetes would, rounded up from the container's CPU limit.
Environments that name a NATS bus are left to the dev-env test.
"""

import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu(quantity):
    text = str(quantity)
    return math.ceil(int(text[:-1]) / 1000) if text.endswith("m") else math.ceil(float(text))


def environments(compose):
    found = [("compose jimbus", {k: str(v) for k, v in compose["services"]["jimbus"]["environment"].items()})]
    for path in sorted((ROOT / "deploy/kubernetes").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                if not container["image"].startswith("jimbus:"):
                    continue
                env = {}
                for item in container.get("env", []):
                    if "value" in item:
                        env[item["name"]] = item["value"]
                    elif item.get("valueFrom", {}).get("resourceFieldRef", {}).get("resource") == "limits.cpu":
                        env[item["name"]] = str(cpu(container["resources"]["limits"]["cpu"]))
                found.append((f"{path.relative_to(ROOT)} {doc['metadata']['name']}", env))
    return [(name, env) for name, env in found if "JIMBUS_BUS" not in env]


def run(binary, name, env, workdir):
    http = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("JIMBUS_")}, **env}
    env.update(JIMBUS_HTTP=f"127.0.0.1:{http}", JIMBUS_GRPC=f"127.0.0.1:{free_port()}", JIMBUS_DATA_DIR=workdir)
    log = open(os.path.join(workdir, "server.log"), "w")
    server = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print(open(log.name).read()[-2000:], file=sys.stderr)
                return f"{name}: the server did not become ready (exit {server.poll()})"
            time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        status = server.wait(timeout=30)
        return None if status == 0 else f"{name}: exit status {status} after SIGTERM"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def main():
    binary, compose_file = sys.argv[1:3]
    compose = yaml.safe_load(open(compose_file))
    errors = []
    envs = environments(compose)
    for name, env in envs:
        with tempfile.TemporaryDirectory() as workdir:
            error = run(binary, name, env, workdir)
        print(f"run_envs: {name}: {'ok' if error is None else 'FAILED'} ({', '.join(sorted(env))})")
        if error:
            errors.append(error)
    for error in errors:
        print(f"run_envs: {error}", file=sys.stderr)
    sys.exit(1 if errors or len(envs) < 2 else 0)


if __name__ == "__main__":
    main()
