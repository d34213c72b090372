import tomllib

import pytest
from typer.testing import CliRunner

from services.cli import app

runner = CliRunner()
SUBCOMMANDS = (
    "generator",
    "verifier",
    "learner",
    "up",
    "status",
    "prepare",
    "eval",
    "init-tiny-model",
)


def test_help_lists_every_role_and_tool():
    out = runner.invoke(app, ["--help"]).output
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("role", ["generator", "verifier", "learner", "up"])
def test_print_config_shows_the_resolved_config(role):
    result = runner.invoke(app, [role, "--print-config", "--learner.lr", "0.25", "--run.name=x1"])
    assert result.exit_code == 0, result.output
    resolved = tomllib.loads(result.output)
    assert resolved["learner"]["lr"] == 0.25 and resolved["run"]["name"] == "x1"


def test_bad_override_exits_2_naming_the_key():
    result = runner.invoke(app, ["verifier", "--verifier.workerz", "3"])
    assert result.exit_code == 2
    assert "unknown config key 'verifier.workerz' (from CLI --verifier.workerz)" in result.output


KEEP_FREED_PROBE = """
import ctypes, sys
from services.cli import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
keep_freed_memory(sys.argv[1] == "on")
block = libc.malloc(16 << 20)
ctypes.memset(block, 1, 16 << 20)
libc.free(block)
print(libc.mallinfo2().fordblks >> 20)  # MiB of freed memory the heap kept for reuse
"""


def test_keep_freed_memory_keeps_a_freed_16_mib_block_for_reuse():
    import subprocess
    import sys

    def kept_mib(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", KEEP_FREED_PROBE, mode], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    assert kept_mib("off") < 16  # glibc's default: a 16 MiB block is mmapped, unmapped on free
    assert kept_mib("on") >= 16


def test_init_refuses_a_task_folder_of_another_kind_in_one_line(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(
        '{"id": "train-0", "prompt": "Which number is last in: 1 2?", "data_source": "pick"}\n'
    )
    args = ["init", "--model.build_if_missing", "no", "--learner.make_task_if_missing", "true",
            "--learner.train_file", str(train), "--learner.task_kind", "pick2"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "holds the synthetic 'pick' task but learner.task_kind is 'pick2'" in result.output
    assert "Traceback" not in result.output
