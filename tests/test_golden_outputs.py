"""Golden outputs of the command line: the previous release's answers to one fixed scenario, replayed
against the current code and compared field by field.

The scenario runs ``manage.py`` in child processes on the example pipeline (the site's default
stages) with a fresh embedded SQLite database, exactly as the recording did. Only what a user relies
on is compared: each change's id, state, next action and reason; the sequence of audit events and
their change ids; the verdicts and exit codes. Times, run ids, entry ids, durations, the local actor
and checksums are left out: they differ between machines and runs.

Recording (tests/golden/README.md): with this file copied into a checkout of the release to record,
``python tests/test_golden_outputs.py --record tests/golden --commit SHA`` writes one JSON file per
step. This test imports no module of the product: the CLI is the interface under comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"

#: JSON fields renamed since the recording, old name -> new name. The golden files keep the old
#: names; each is renamed here before any comparison, so a deliberate rename is one line, not a
#: re-recording.
RENAMED_FIELDS: dict[str, str] = {
    # plan --json and run --dry-run --json: the pipeline's digest, named as the API names it.
    "pipeline_digest": "digest",
    # validate --json and drift --json: a finding's fields, named as the API names them.
    "check": "check_name",
    "evidence": "last_evidence",
}

pytestmark = [pytest.mark.slow, pytest.mark.sqlite_pass]

PID = re.compile(r"\bpid \d+")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)?")


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[str, ...]
    #: What the step's JSON is, for the comparison: plan, validate, issues, audit, history, run, verify, error, or none.
    kind: str
    env: dict[str, str] = field(default_factory=dict)


def _snapshot(label: str) -> list[Step]:
    """Every reading command at one point of the scenario."""
    return [
        Step(f"{label}.plan", ("flamingock", "plan", "--json"), "plan"),
        Step(f"{label}.validate", ("flamingock", "validate", "--json"), "validate"),
        Step(f"{label}.issues", ("flamingock", "issues", "--json"), "issues"),
        Step(f"{label}.audit_list", ("flamingock", "audit", "list", "--json"), "audit"),
        Step(f"{label}.audit_history", ("flamingock", "audit", "list", "--history", "--json", "--limit", "0"), "history"),
    ]


SCENARIO: list[Step] = [
    Step("migrate", ("migrate", "--no-input", "-v", "0"), "none"),
    *_snapshot("fresh"),
    # A run killed (SIGKILL) right after its second change committed: a holder that never released the lock.
    Step("run_killed", ("flamingock", "run", "--json"), "none", env={"FLAMINGOCK_CRASH_AT": "after_applied:shop-add-customer-status"}),
    *_snapshot("after_kill"),
    # The dead holder's lease (60 s) outlives a one-second wait, so this run is refused with exit 5.
    Step("run_while_locked", ("flamingock", "run", "--json"), "run", env={"FLAMINGOCK_LOCK_WAIT": "1"}),
    Step("lock_release", ("flamingock", "lock", "release", "--reason", "golden: the holder was killed", "--json"), "none"),
    Step("run_rest", ("flamingock", "run", "--json"), "run"),
    *_snapshot("applied"),
    Step("run_nothing_to_do", ("flamingock", "run", "--json"), "run"),
    Step("undo_with_cascade", ("flamingock", "undo", "shop-add-customer-status", "--reason", "golden: undo with its cascade", "--json"), "run"),
    *_snapshot("undone"),
    Step("skip_already_skipped", ("flamingock", "skip", "shop-create-orders", "--reason", "golden: not here", "--json"), "error"),
    Step("reapply_status", ("flamingock", "reapply", "shop-add-customer-status", "--reason", "golden: release", "--json"), "run"),
    Step("reapply_backfill", ("flamingock", "reapply", "shop-backfill-customer-status", "--reason", "golden: release", "--json"), "run"),
    *_snapshot("released"),
    Step("run_released", ("flamingock", "run", "--json"), "run"),
    *_snapshot("final"),
    Step("audit_verify", ("flamingock", "audit", "verify", "--json"), "verify"),
]


def _file_name(index: int, step: Step) -> str:
    return f"{index:02d}_{step.name.replace('.', '_')}.json"


def _scenario_env(workdir: Path) -> dict[str, str]:
    """The recording's environment: embedded SQLite in a scratch directory and nothing else configured."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLAMINGOCK_") and key not in {"DATABASE_URL", "REDIS_URL"}}
    env.update({"FLAMINGOCK_SQLITE_PATH": str(workdir / "flamingock.sqlite3"), "FLAMINGOCK_VAR_DIR": str(workdir / "var")})
    env["FLAMINGOCK_DEMO"] = "1"  # the scenario is the embedded demo's example pipeline, as ./bin/run starts it
    return env


def scenario_replay(workdir: Path) -> list[dict]:
    """Run every step in order on a fresh database under ``workdir``; one record per step."""
    env = _scenario_env(workdir)
    records = []
    for index, step in enumerate(SCENARIO):
        done = subprocess.run(
            [sys.executable, str(REPO / "manage.py"), *step.args],
            env={**env, **step.env},
            capture_output=True,
            text=True,
            timeout=180,
            cwd=REPO,
        )
        try:
            output = json.loads(done.stdout) if done.stdout.strip() else None
        except json.JSONDecodeError:
            output = None
        records.append(
            {
                "file": _file_name(index, step),
                "step": step.name,
                "argv": ["manage.py", *step.args],
                "env": step.env,
                "exit_code": done.returncode,
                "json": output,
                "stdout": "" if output is not None else done.stdout,
                "stderr_tail": done.stderr[-2000:] if done.returncode not in (0,) else "",
            }
        )
    return records


# -- normalisation: what is compared --------------------------------------------------------------


def _renamed(value):
    if isinstance(value, dict):
        return {RENAMED_FIELDS.get(key, key): _renamed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_renamed(item) for item in value]
    return value


def _f(name: str) -> str:
    """A field's name in the current output, after the renames."""
    return RENAMED_FIELDS.get(name, name)


def _scrub(text, actor: str = ""):
    """Run ids, times, process ids and the local operator inside messages are volatile; the rest is compared."""
    if not isinstance(text, str):
        return text
    if actor:
        text = text.replace(actor, "<actor>")
        text = re.sub(rf"\b{re.escape(actor.rpartition('@')[2])}\b", "<host>", text)
    return PID.sub("pid <pid>", TIMESTAMP.sub("<time>", UUID.sub("<uuid>", text)))


def _plan(data: dict) -> dict:
    return {
        "changes": [
            (c[_f("stage")], c[_f("order")], c[_f("id")], c[_f("latest_state")], c[_f("next_action")], _scrub(c[_f("reason")]))
            for c in data[_f("changes")]
        ],
        "missing_from_code": [_scrub(json.dumps(m, sort_keys=True, default=str)) for m in data[_f("missing_from_code")]],
        "summary": data[_f("summary")],
        "notices": data[_f("notices")],
    }


def _validate(data: dict) -> dict:
    lists = ("checksum_drift", "missing_from_code", "blocked", "awaiting_approval", "pending")
    return {
        "valid": data[_f("valid")],
        "exit_code": data[_f("exit_code")],
        **{name: data[_f(name)] for name in lists},
        "findings": [(f.get(_f("kind")), f.get(_f("change_id"))) for f in data[_f("findings")]],
    }


def _issues(data: list) -> list:
    return [(i[_f("id")], i[_f("latest_state")], i[_f("next_action")], _scrub(i[_f("reason")])) for i in data]


def _events(data: list) -> list:
    return [(e[_f("event")], e[_f("change_id")], e[_f("state")]) for e in data]


def _run(data: dict) -> dict:
    if _f("run_id") not in data:  # an error or a request instead of a run
        return {key: _scrub(value) for key, value in data.items() if key in (_f("error"), _f("exit_code"), _f("status"))}
    actor = data[_f("actor")]
    return {
        "kind": data[_f("kind")],
        "status": data[_f("status")],
        "reason": _scrub(data[_f("reason")], actor),
        "counts": data[_f("counts")],
        "results": [(r[_f("change_id")], r[_f("action")], r[_f("result")], _scrub(r[_f("reason")], actor)) for r in data[_f("results")]],
    }


def _verify(data: dict) -> dict:
    return {name: data[_f(name)] for name in ("ok", "mode", "entries_checked", "head_seq", "problem", "message")}


def _error(data: dict) -> dict:
    return {"error": _scrub(data[_f("error")]), "exit_code": data[_f("exit_code")]}


NORMALISE = {
    "plan": _plan,
    "validate": _validate,
    "issues": _issues,
    "audit": _events,
    "history": _events,
    "run": _run,
    "verify": _verify,
    "error": _error,
}


# -- the comparison -------------------------------------------------------------------------------


def _golden(index: int, step: Step) -> dict:
    path = GOLDEN / _file_name(index, step)
    assert path.exists(), f"no golden output {path.name} for step {step.name!r}: the scenario changed without a new recording"
    record = json.loads(path.read_text())
    record["json"] = _renamed(record["json"])
    return record


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> list[dict]:
    return scenario_replay(tmp_path_factory.mktemp("golden-replay"))


def _pairs(replay: list[dict], kind: str):
    for index, step in enumerate(SCENARIO):
        if step.kind == kind:
            yield step, _golden(index, step), replay[index]


def _compare(replay: list[dict], kind: str) -> int:
    compared = 0
    for step, golden, current in _pairs(replay, kind):
        assert current["json"] is not None, (
            f"{step.name}: no JSON on stdout (exit {current['exit_code']}): {current['stdout']}{current['stderr_tail']}"
        )
        normalise = NORMALISE[kind]
        assert normalise(current["json"]) == normalise(golden["json"]), f"{step.name}: {' '.join(golden['argv'])} differs from the recording"
        compared += 1
    return compared


def test_the_recording_covers_every_step_of_the_scenario_in_order():
    index = json.loads((GOLDEN / "index.json").read_text())
    assert [(s["file"], s["step"], s["argv"][1:]) for s in index["steps"]] == [
        (_file_name(i, step), step.name, list(step.args)) for i, step in enumerate(SCENARIO)
    ]


def test_every_step_exits_with_the_recorded_code(replay):
    got = [(r["step"], r["exit_code"]) for r in replay]
    want = [(step.name, _golden(i, step)["exit_code"]) for i, step in enumerate(SCENARIO)]
    assert got == want, "\n".join(f"{r['step']}: exit {r['exit_code']}: {r['stderr_tail']}" for r in replay if r["stderr_tail"])


def test_the_killed_run_is_killed_and_the_next_one_is_refused_the_lock(replay):
    # A guard on the scenario itself: were the fault injection lost, the later steps would compare other states.
    by_step = {r["step"]: r for r in replay}
    assert by_step["run_killed"]["exit_code"] == -9
    assert by_step["run_while_locked"]["exit_code"] == 5
    assert by_step["run_while_locked"]["json"][_f("status")] == "LOCKED"


def test_plan_gives_each_change_the_recorded_state_next_action_and_reason(replay):
    assert _compare(replay, "plan") == 6


def test_validate_gives_the_recorded_verdict_and_change_lists(replay):
    assert _compare(replay, "validate") == 6


def test_issues_lists_the_recorded_changes(replay):
    assert _compare(replay, "issues") == 6


def test_audit_list_shows_the_recorded_latest_event_of_each_change(replay):
    assert _compare(replay, "audit") == 6


def test_audit_history_holds_the_recorded_sequence_of_events_and_change_ids(replay):
    assert _compare(replay, "history") == 6


def test_runs_undo_and_reapply_report_the_recorded_status_and_per_change_results(replay):
    assert _compare(replay, "run") == 7


def test_a_refused_skip_gives_the_recorded_error(replay):
    assert _compare(replay, "error") == 1


def test_the_audit_chain_verifies_at_the_end_as_recorded(replay):
    assert _compare(replay, "verify") == 1
    assert replay[-1]["json"][_f("ok")] is True


# -- recording ------------------------------------------------------------------------------------


def _record(directory: Path, commit: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="golden-record-") as workdir:
        records = scenario_replay(Path(workdir))
    for record in records:
        (directory / record["file"]).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    index = {
        "commit": commit,
        "steps": [{"file": r["file"], "step": r["step"], "argv": r["argv"], "env": r["env"], "exit_code": r["exit_code"]} for r in records],
    }
    (directory / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    for record in records:
        print(f"{record['file']:<40} exit {record['exit_code']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Record the golden outputs of the code this file sits in.")
    parser.add_argument("--record", type=Path, required=True, help="the directory to write the golden files to")
    parser.add_argument("--commit", required=True, help="the commit of the recorded code, kept in index.json")
    arguments = parser.parse_args()
    _record(arguments.record, arguments.commit)
