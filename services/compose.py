"""``luffy compose``: a compose file for the GPU stack with each service on its own GPUs.

docker-compose.yml's ``gpu`` profile runs one learner and one generator on fixed GPUs;
``--scale generator=N`` cannot give replicas different devices (NCCL refuses two ranks on one
GPU and vLLM's memory check fails for the second engine on it). ``gpu_stack`` derives a
standalone file from docker-compose.yml instead: the learner on ``learner_gpus`` (and
``learner.nproc`` set to their count), one service per generator (``generator-0``, ...) on the
next GPUs, ``gpus_per_generator`` each, plus Redis, verifiers, Prometheus and Grafana as they
are. ``check_placement`` is the static check the tests run on both files.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

GPU_SERVICES = ("learner", "generator")
KEEP = ("redis", "verifier", "prometheus", "grafana")


class PlacementError(ValueError):
    """A GPU layout that cannot run (overlapping devices, more GPUs than the machine has)."""


def parse_gpus(text: str) -> list[int]:
    """``"0-3"`` / ``"0,2,5"`` / ``"4"`` -> GPU indices."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        if not (low.isdigit() and (not high or high.isdigit())):
            raise PlacementError(f"GPU list {text!r}: {part!r} is not N or N-M")
        out += range(int(low), int(high or low) + 1)
    if not out or len(set(out)) != len(out):
        raise PlacementError(f"GPU list {text!r} is empty or names a GPU twice")
    return out


def _devices(ids: list[int]) -> dict[str, Any]:
    device = {"driver": "nvidia", "device_ids": [str(i) for i in ids], "capabilities": ["gpu"]}
    return {"resources": {"reservations": {"devices": [device]}}}


def gpu_stack(
    base: dict[str, Any],
    learner_gpus: list[int],
    generators: int,
    gpus: int,
    gpus_per_generator: int = 1,
) -> dict[str, Any]:
    """The GPU stack of ``base`` (docker-compose.yml, parsed) with explicit placement."""
    if generators < 1 or gpus_per_generator < 1:
        raise PlacementError("need at least one generator with at least one GPU")
    taken = set(learner_gpus)
    free = [g for g in range(gpus) if g not in taken]
    need = generators * gpus_per_generator
    if max(learner_gpus) >= gpus or need > len(free):
        raise PlacementError(
            f"learner GPUs {learner_gpus} + {generators} generator(s) x {gpus_per_generator} "
            f"GPU(s) do not fit on {gpus} GPUs"
        )
    services = base["services"]
    out: dict[str, Any] = {name: copy.deepcopy(services[name]) for name in KEEP}
    learner = copy.deepcopy(services["learner"])
    learner["deploy"] = _devices(learner_gpus)
    learner["environment"] = {
        **learner["environment"],
        "LUFFY_LEARNER__NPROC": str(len(learner_gpus)),
    }
    out["learner"] = learner
    for k in range(generators):
        gen = copy.deepcopy(services["generator"])
        gen["deploy"] = _devices(free[k * gpus_per_generator : (k + 1) * gpus_per_generator])
        gen["environment"] = {**gen["environment"], "LUFFY_GENERATOR__ID": f"generator-{k}"}
        out[f"generator-{k}"] = gen
    for svc in out.values():
        svc.pop("profiles", None)  # a file of its own: everything in it runs
    return {"name": base.get("name", "luffy"), "services": out, "volumes": base["volumes"]}


def gpu_ids(service: dict[str, Any]) -> list[int]:
    """The GPUs a compose service reserves (by device id); [] for none."""
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    ids: list[int] = []
    for device in devices.get("devices", []):
        if "count" in device:
            raise PlacementError(f"a GPU reservation by count ({device['count']!r}), not by id")
        ids += [int(i) for i in device.get("device_ids", [])]
    return ids


def check_placement(compose: dict[str, Any], gpus: int) -> list[str]:
    """What is wrong with the GPU placement of ``compose`` on a machine with ``gpus`` GPUs:
    devices shared between services, more than there are, a learner whose ``nproc`` differs
    from its GPU count, GPU services without host IPC and unlimited memlock (NCCL), or without
    a readiness healthcheck with a start period."""
    problems, owner = [], {}
    for name, svc in compose["services"].items():
        ids = gpu_ids(svc)
        if not ids:
            continue
        for gpu in ids:
            if gpu >= gpus:
                problems.append(f"{name}: GPU {gpu} does not exist ({gpus} GPUs)")
            if gpu in owner:
                problems.append(f"{name}: GPU {gpu} is also {owner[gpu]}'s")
            owner[gpu] = name
        if name == "learner":
            nproc = svc.get("environment", {}).get("LUFFY_LEARNER__NPROC")
            if nproc != str(len(ids)):
                problems.append(f"learner: nproc {nproc} for {len(ids)} GPUs")
        if svc.get("ipc") != "host" and not svc.get("shm_size"):
            problems.append(f"{name}: no ipc: host or shm_size (NCCL needs shared memory)")
        if svc.get("ulimits", {}).get("memlock") != -1:
            problems.append(f"{name}: memlock is not unlimited")
        check = svc.get("healthcheck", {})
        if "/readyz" not in " ".join(check.get("test", [])) or not check.get("start_period"):
            problems.append(f"{name}: no /readyz healthcheck with a start_period")
    return problems


def write_gpu_stack(out: Path, stack: dict[str, Any]) -> None:
    import yaml

    header = f"# Written by `luffy compose`; run: docker compose -f {out.name} up\n"
    out.write_text(header + yaml.safe_dump(stack, sort_keys=False))


__all__ = [
    "PlacementError",
    "check_placement",
    "gpu_ids",
    "gpu_stack",
    "parse_gpus",
    "write_gpu_stack",
]
