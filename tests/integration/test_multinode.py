"""The learner across machines: ``learner.nnodes`` nodes, each its own ``luffy learner``
process tree (its own torchrun agent and ranks, in a process group of its own as on another
machine), rendezvousing over TCP at node 0's ``master_addr:master_port``.

- Two nodes of one rank train exactly as one node of two ranks (same batches, same world):
  the checkpoints' weights agree within 1e-6 (seen: equal).
- A node killed mid-run (SIGKILL to its whole process tree) takes the run down loudly: the
  surviving node's rank fails its next collective and exits, rather than hanging; restarted
  (as Kubernetes restarts the pods), both nodes resume from the last checkpoint and the run
  ends with every fed task trained exactly once or still accounted for in flight.
"""

import contextlib
import json
import time

import httpx
import psutil
from safetensors.torch import load_file

from common.membership import list_members
from common.net import free_port
from common.transport import Keys, delete_run_keys
from tests.integration.helpers import spawn, wait_for
from tests.integration.test_chaos import account
from tests.integration.test_learner_service import learner_args, start_helpers, stop, write_task

SFT = [
    "--algorithm.mode", "sft", "--algorithm.loss_agg", "token_mean",
    "--algorithm.entropy_coef", "0", "--learner.lr", "1e-3", "--learner.max_steps", "6",
]  # fmt: skip


def nodes(args, nnodes, port, *extra):
    """One ``luffy learner`` per node, each in a session of its own (a separate machine)."""
    topology = ["--learner.nnodes", str(nnodes), "--learner.master_port", str(port)]
    return [
        spawn(
            "-m",
            "services.learner",
            *args,
            *topology,
            "--learner.node_rank",
            str(rank),
            *extra,
            session=True,
        )
        for rank in range(nnodes)
    ]


def kill_tree(proc):
    """SIGKILL a node's whole process tree, as a machine going down (torchrun starts its
    ranks in sessions of their own, so the process group alone would leave them running)."""
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def final_weights(run_dir, step):
    hf = run_dir / "checkpoints" / f"step_{step:08d}" / "hf"
    return load_file(str(hf / "model.safetensors"))


def test_two_nodes_train_exactly_as_one_node_with_two_ranks(
    redis_url, run_name, rclient, tmp_path, tiny_model_dir
):
    data = write_task(tmp_path / "train.jsonl", n=24)
    runs = {"one-node": f"{run_name}-1x2", "two-nodes": f"{run_name}-2x1"}
    try:
        one = learner_args(redis_url, runs["one-node"], tmp_path, tiny_model_dir, data, *SFT)
        single = spawn("-m", "services.learner", *one, "--learner.nproc", "2",
                       "--learner.master_port", str(free_port()))  # fmt: skip
        out = single.output(timeout=400)
        assert single.returncode == 0, out[-3000:]
        two = learner_args(redis_url, runs["two-nodes"], tmp_path, tiny_model_dir, data, *SFT)
        procs = nodes(two, 2, free_port())
        outs = [p.output(timeout=400) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    finally:
        for run in runs.values():
            delete_run_keys(rclient, Keys(run))
    metas = {
        k: json.loads((tmp_path / r / "checkpoints/step_00000006/meta.json").read_text())
        for k, r in runs.items()
    }
    assert metas["one-node"]["world"] == metas["two-nodes"]["world"] == 2
    a = final_weights(tmp_path / runs["one-node"], 6)
    b = final_weights(tmp_path / runs["two-nodes"], 6)
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max((a[k] - start[k]).abs().max().item() for k in a if k in start)
    assert worst <= 1e-6 and moved > 1e-4, (worst, moved)  # it trained, and alike


def _learner_step(resilient, keys):
    members = list_members(resilient, keys, "learner")
    if not members:
        return 0
    try:
        return httpx.get(f"http://127.0.0.1:{members[0]['port']}/status", timeout=5).json()["step"]
    except httpx.HTTPError:
        return 0


def test_a_killed_learner_node_resumes_from_its_checkpoint_and_loses_nothing(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir, faults
):
    keys = Keys(run_name)
    data = write_task(tmp_path / "train.jsonl")
    gen, ver = start_helpers(redis_url, run_name, tmp_path, tiny_model_dir)
    args = learner_args(redis_url, run_name, tmp_path, tiny_model_dir, data)
    # a dead peer fails gloo's next collective at once; the timeout bounds anything else
    args += ["--learner.max_steps", "12", "--learner.collective_timeout_s", "30"]
    run_dir = tmp_path / run_name
    try:
        first = nodes(args, 2, free_port())
        wait_for(lambda: _learner_step(resilient, keys) >= 5, 300, "step 5 (a checkpoint at 4)")
        kill_tree(first[1])  # node 1 goes down: its agent and its rank
        killed = time.monotonic()
        try:
            out0 = first[0].output(timeout=120)
        except Exception:
            raise AssertionError("".join(first[0].lines[-80:])) from None
        noticed_s = time.monotonic() - killed
        first[1].output(timeout=30)
        assert first[0].returncode != 0, out0[-3000:]  # node 0 noticed and stopped
        assert noticed_s < 60, noticed_s  # within the collective timeout, not a hang
        second = nodes(args, 2, free_port(), "--learner.resume", "true")
        outs = [p.output(timeout=400) for p in second]
        assert [p.returncode for p in second] == [0, 0], outs[0][-3000:]
    finally:
        for proc in first + locals().get("second", []):
            kill_tree(proc)
        stop(gen, ver)
    assert "resumed from" in outs[0]
    meta = json.loads((run_dir / "checkpoints" / "step_00000012" / "meta.json").read_text())
    assert meta["world"] == 2
    books = account(run_dir, meta, 60)
    assert books.duplicates == 0 and books.fed == books.accounted, books
    faults.add(
        "learner node killed mid-run (2 nodes x 1 rank)",
        injected=1,
        survived=1,
        lost=len(books.fed - books.accounted),
        duplicated=books.duplicates,
        node_0_stopped_s=round(noticed_s, 1),
    )
