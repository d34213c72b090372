"""How ``luffy status`` draws a snapshot at any terminal width.

Rich fits a table that is too wide by ellipsizing its columns ("genera…"). Instead the member
table is laid out for the width: the richest layout whose columns fit is chosen (the extra
details go first, then addresses, then role and id share one column, then free text wraps
tighter), and below that each member becomes a block of wrapped lines. Free text (ids, notes,
details) wraps rather than being cut; every other column always gets its full width.
``StatusView`` decides at render time, so a live view follows a resized terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from services.stack import ROLES

HEADERS = {"member": "member", "version": "version", "ver": "ver"}  # else the key itself
# Free-text columns wrap (never cut) down to this many cells; the others are never narrower
# than their longest value. Role and id share the ``member`` column one per line.
ROOMY = {"id": 24, "member": 24, "notes": 16, "detail": 16}
TIGHT = {**ROOMY, "member": 16, "notes": 12}
GAP = 2  # cells between two columns of the table style below
_WIDE = ("role", "id", "address", "ready", "version", "progress", "rate", "notes", "detail")
_COMPACT = ("member", "ready", "ver", "progress", "rate", "notes")
LAYOUTS = (  # richest first; the first that fits the width is drawn
    (_WIDE, ROOMY),
    (tuple(k for k in _WIDE if k != "detail"), ROOMY),
    (tuple(k for k in _WIDE if k not in ("detail", "address")), ROOMY),
    (_COMPACT, ROOMY),
    (_COMPACT, TIGHT),
)


def member_rows(snap: dict[str, Any]) -> list[dict[str, str]]:
    """One row per live member, every layout's cells by column name."""
    rows = []
    for role in ROLES:
        members = snap["members"].get(role, [])
        statuses = snap.get("statuses", {}).get(role) or [{}] * len(members)
        for member, status in zip(members, statuses, strict=False):
            progress, rate, notes, detail = _role_cells(role, status)
            if not member.get("ready"):  # why comes first: it is what the reader looks for
                why = "; ".join(member.get("not_ready") or ["starting"])
                notes = f"not ready: {why}; {notes}"
            version = str(status.get("policy_version", member.get("policy_version", "-")))
            rows.append(
                {
                    "role": role,
                    "id": str(member.get("id")),
                    "member": f"{role} {member.get('id')}",
                    "address": f"{member.get('host')}:{member.get('port')}",
                    "ready": "yes" if member.get("ready") else "no",
                    "version": version,
                    "ver": version,
                    "progress": progress,
                    "rate": rate,
                    "notes": notes,
                    "detail": detail,
                }
            )
    return rows


def _role_cells(role: str, status: dict[str, Any]) -> tuple[str, str, str, str]:
    """progress, rate, notes and the wide-only detail of one member's /status."""
    counters = status.get("counters", {})
    if role == "learner":
        held = (status.get("last_eval") or {}).get("reward_mean")
        return (
            f"step {status.get('step')}/{status.get('max_steps')}",
            f"reward {_fmt(status.get('reward_mean'))}",
            f"stale dropped {(status.get('resolved') or {}).get('stale', 0)}",
            f"{status.get('mode', '-')}, held-out {_fmt(held)}",
        )
    if role == "generator":
        sync = status.get("sync", {})
        occupancy = (status.get("engine_load") or {}).get("occupancy")
        busy = "-" if occupancy is None else f"{occupancy:.0%}"
        return (
            f"tasks {int(counters.get('tasks', 0))}",
            f"{status.get('tokens_per_s', 0)} tok/s",
            str(sync.get("last_error") or f"epoch {sync.get('epoch')}"),
            f"engine busy {busy}, inflight {status.get('inflight', '-')}",
        )
    scored = counters.get("scored", {})
    return (
        f"scored {int(sum(scored.values()))}",
        f"inflight {status.get('inflight', 0)}",
        f"timeouts {counters.get('timeouts', 0)}",
        f"reward {status.get('reward', '-')}, workers "
        f"{status.get('workers_alive', '-')}/{status.get('workers', '-')}",
    )


def choose_layout(rows: list[dict[str, str]], width: int) -> dict[str, int] | None:
    """The richest layout that fits ``width`` uncut, as column -> width (None: too narrow for
    any table; draw one block per member)."""
    for columns, wrap_min in LAYOUTS:
        natural = {key: _natural(rows, key) for key in columns}
        widths = {key: _least(rows, key, natural[key], wrap_min) for key in columns}
        spare = width - sum(widths.values()) - GAP * (len(columns) - 1)
        if spare >= 0:
            _unwrap(widths, natural, spare, wrap_min)
            return widths
    return None


def _header(key: str) -> str:
    return HEADERS.get(key, key)


def _natural(rows: list[dict[str, str]], key: str) -> int:
    return max([cell_len(_header(key))] + [cell_len(row[key]) for row in rows])


def _least(rows: list[dict[str, str]], key: str, natural: int, wrap_min: dict[str, int]) -> int:
    if key not in wrap_min:
        return natural
    least = min(natural, wrap_min[key])
    if key == "member":  # narrower only if the role and the id each still fit on a line
        least = min(least, max(cell_len(w) for row in rows for w in row[key].split()))
    return max(least, cell_len(_header(key)))


def _unwrap(widths: dict[str, int], natural: dict[str, int], spare: int, wrap: dict) -> None:
    """Spend the room left on wrapped columns: first on whole ones, cheapest first (a column
    one cell short still wraps), then the rest on the free text that still wraps."""
    wrapped = sorted((k for k in widths if k in wrap), key=lambda k: natural[k] - widths[k])
    for whole in (True, False):
        for key in wrapped:
            need = natural[key] - widths[key]
            part = 0 if whole or key in ("id", "member") else spare  # a short id still folds
            grow = need if need <= spare else part
            widths[key] += grow
            spare -= grow


def member_table(rows: list[dict[str, str]], widths: dict[str, int]) -> Table:
    """Every column at its planned width: rich then has nothing to squeeze (or ellipsize)."""
    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, padding=(0, 1)
    )
    for key, width in widths.items():
        table.add_column(_header(key), width=width, no_wrap=key not in ROOMY, overflow="fold")
    for row in rows:
        table.add_row(*(row[key] for key in widths))
    return table


def member_blocks(rows: list[dict[str, str]]) -> Iterable[Text]:
    """Narrow terminals: each member as a few wrapped lines, every value in full."""
    for row in rows:
        yield Text.assemble(
            (f"{row['role']} {row['id']}", "bold"),
            f"  version {row['version']}, ready {row['ready']}",
        )
        yield Text(f"  {row['progress']}, {row['rate']}, {row['notes']}")
        yield Text(f"  {row['address']}; {row['detail']}")


def streams_table(snap: dict[str, Any]) -> Table:
    table = Table("stream", "length", "not yet read", "read, unacked", box=box.SIMPLE_HEAD)
    for name, depth in snap["streams"].items():
        table.add_row(name, *(str(depth.get(k, "")) for k in ("length", "lag", "pending")))
    return table


def headline(snap: dict[str, Any]) -> Text:
    dead = snap["streams"].get("deadletter", {}).get("length", 0)
    return Text.assemble(
        "run ",
        (str(snap["run"]), "bold"),
        f"  policy version {snap['policy_version']}  deadletter entries {dead}",
    )


class StatusView:
    """A snapshot drawn for whatever width it is rendered at."""

    def __init__(self, snap: dict[str, Any], note: str = ""):
        self.snap, self.note = snap, note

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield headline(self.snap)
        rows = member_rows(self.snap)
        widths = choose_layout(rows, options.max_width)
        if not rows:
            yield Text("no live members")
        elif widths is None:
            yield from member_blocks(rows)
        else:
            yield member_table(rows, widths)
        yield streams_table(self.snap)
        if self.note:
            yield Text(self.note, style="dim")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


__all__ = ["LAYOUTS", "StatusView", "choose_layout", "member_rows", "member_table"]
