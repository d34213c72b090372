"""``luffy status`` at any terminal width: nothing that matters is cut to an ellipsis, a wider
terminal shows more, a narrow one gets one block per member. Also ``--watch``'s parsing."""

import io

import pytest
from rich.cells import cell_len
from rich.console import Console

from services.status import WATCH_DEFAULT_S, split_watch
from services.status_view import StatusView, choose_layout, member_rows
from tests.unit.status_snapshot import LONG_ID, snapshot

WHOLE = ("role", "version", "progress", "rate")  # never wrapped: must appear verbatim


def render(width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(StatusView(snapshot()))
    return console.export_text()


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_every_width_fits_and_cuts_nothing(width):
    text = render(width)
    assert max(cell_len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    assert "run qwen-7b-luffy-seed1" in text and "deadletter" in text
    rows = member_rows(snapshot())
    widths = choose_layout(rows, width) or {}
    id_width = widths.get("id", widths.get("member", width))
    for row in rows:
        assert all(row[key] in text for key in WHOLE), row
        # an id wider than its column folds onto the next lines (its start shows, no "…")
        assert row["id"] in text if len(row["id"]) <= id_width else row["id"][:id_width] in text
    for word in "not ready: behind the learner: version 35 < 37, fetching the weights".split():
        assert word in text  # the reason wraps, word by word, but is all there
    for stream in ("prompts", "rollouts", "scored", "deadletter"):
        assert stream in text


@pytest.mark.parametrize("width", [80, 120, 200])
def test_a_table_from_80_columns_with_its_headers_whole(width):
    widths = choose_layout(member_rows(snapshot()), width)
    assert widths is not None and sum(widths.values()) + 2 * (len(widths) - 1) <= width
    header = next(line for line in render(width).splitlines() if "progress" in line)
    assert header.split() == list(widths)  # every header whole, in order


def test_wider_shows_more_and_narrow_gets_blocks():
    rows = member_rows(snapshot())
    assert choose_layout(rows, 60) is None
    narrow = render(60)
    assert LONG_ID in narrow and "10.0.0.4:8101" in narrow  # blocks keep every value
    assert "address" not in render(80) and "10.0.0.4:8101" not in render(80)
    assert "address" in render(120) and "10.0.0.4:8101" in render(120)
    assert "detail" not in render(120)
    wide = render(200)
    assert "detail" in wide and "engine busy 82%, inflight 64" in wide and LONG_ID in wide
    counts = [len(choose_layout(rows, w)) for w in (80, 100, 120, 200)]
    assert counts == sorted(counts) and counts[0] < counts[-1]


def test_a_member_without_status_still_shows():
    snap = snapshot()
    snap["statuses"] = {}  # every /status unreachable
    assert "lrn-node0-41233" in render(80)
    rows = member_rows(snap)
    assert len(rows) == 7 and rows[0]["progress"] == "step None/None"


@pytest.mark.parametrize(
    ("args", "every_s", "rest"),
    [
        ([], None, []),
        (["--watch"], WATCH_DEFAULT_S, []),
        (["--watch", "5", "--run.name", "x"], 5.0, ["--run.name", "x"]),
        (["--run.name", "x", "--watch"], WATCH_DEFAULT_S, ["--run.name", "x"]),
        (["--watch", "--run.name", "x"], WATCH_DEFAULT_S, ["--run.name", "x"]),
        (["--watch=0.5"], 0.5, []),
    ],
)
def test_watch_takes_an_optional_number_of_seconds(args, every_s, rest):
    assert split_watch(args) == (every_s, rest)


@pytest.mark.parametrize("args", [["--watch", "soon"], ["--watch=0"], ["--watch", "-1"]])
def test_watch_refuses_what_is_not_seconds(args):
    with pytest.raises(ValueError, match="--watch takes seconds"):
        split_watch(args)
