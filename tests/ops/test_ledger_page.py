"""The ledger page of a replayed run (recorded model outputs through a real fleet), rendered by the
CLI, opened in real headless Chromium (Debian's package): the DOM Chromium builds shows the numbers
this test computes itself from the results, and the screenshot is a PNG of the asked size with the
charts drawn in it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest
import yaml

from evaluation.fleet_run import windowed, write_policies
from evaluation.policy import EvalPolicy
from evaluation.policy import load as load_policy
from evaluation.replay import agreement_for, is_correct
from evaluation.replay import load as load_rows
from producer.client import PanelClient
from producer.fleet import SIM_KEY, Fleet
from producer.ledger_view import _pct

REPO = Path(__file__).resolve().parents[2]
QUESTIONS = 16
WIDTH, HEIGHT = 1280, 1400
SCREENSHOT = Path(tempfile.gettempdir()) / "panel-ledger-page.png"  # kept for a human to look at


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium not installed: apt-get install -y chromium (.ci/run does)")
    return path


class Rows(HTMLParser):
    """The per-class table as {task class: [cell texts]}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.current: str | None = None
        self.cell: list[str] | None = None
        self.summary = ""
        self.in_summary = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-class"):
            self.current = a["data-class"]
            self.rows[self.current] = []
        elif tag == "td" and self.current:
            self.cell = []
        elif tag == "p" and a.get("id") == "summary":
            self.in_summary = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.current and self.cell is not None:
            self.rows[self.current].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tr":
            self.current = None
        elif tag == "p":
            self.in_summary = False

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)
        if self.in_summary:
            self.summary += data


@pytest.fixture(scope="module")
def replayed(replay_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict]], dict[str, bool]]:
    """Run 16 MMLU questions under three policies; write the page with the CLI; return it with
    each class's receipts and the labels (correct or not, by the fleet's own answer extraction)."""
    from workers.panel.agreement import make_rule
    from workers.policy import AgreementSpec

    file = replay_dir / "mmlu_train.jsonl"
    rows = load_rows(file)[:QUESTIONS]
    policies = [load_policy("cheap-staged"), load_policy("panel3-parallel"),
                EvalPolicy(name="single-mini", lane="single", model="gpt-4o-mini"),
                # the same model twice: the panel can never change the single lane's answer -> flagged
                EvalPolicy(name="echo-panel", members=["gpt-4o-mini", "gpt-4o-mini"], quorum=2, arbiter="gpt-4o")]  # fmt: skip
    tmp = tmp_path_factory.mktemp("ledger")
    write_policies(tmp, rows, policies, {})
    (tmp / "sim.yaml").write_text(yaml.safe_dump({"default": {"latency_mode": "recorded", "latency_scale": 0.05}}))
    fleet = Fleet(sim_args=["--replay", str(file), "--config", str(tmp / "sim.yaml")],
                  env={"PANEL_POLICIES": str(tmp), "REPLAY_API_KEY": SIM_KEY, "REPLAY_BASE_URL": "$SIM_URL/v1"})  # fmt: skip
    rule = make_rule(AgreementSpec.model_validate(agreement_for(rows[0].kind)))
    receipts: dict[str, list[dict]] = {}
    labels: dict[str, bool] = {}
    try:
        fleet.start()
        client = PanelClient(fleet.redis_url)
        for p in policies:
            jobs = [{"id": f"{p.name}-{i}", "task_class": p.task_class, "messages": r.messages} for i, r in enumerate(rows)]
            for i, res in windowed(client, jobs, 8, 600):
                assert res.receipt is not None
                labels[res.job_id] = is_correct(rows[i].kind, rule.key(res.answer, []) if res.answer else None, rows[i].gold)
        # expected figures from the ledger's receipts (what the page reads), one per job; a result
        # re-rendered after the decision (a cancelled call's record landing late) can differ from them
        for r in client.ledger():
            receipts.setdefault(r["task_class"], []).append(r)
        client.close()
        (tmp / "labels.jsonl").write_bytes(b"\n".join(orjson.dumps({"job_id": k, "correct": v}) for k, v in labels.items()))
        page = tmp / "ledger.html"
        subprocess.run([sys.executable, "-m", "producer", "--redis-url", fleet.redis_url, "ledger", "--html", str(page),
                        "--labels", str(tmp / "labels.jsonl")], cwd=REPO, check=True, timeout=60)  # fmt: skip
    finally:
        fleet.stop()
    return page, receipts, labels


def test_chromium_renders_the_replayed_runs_numbers(replayed: tuple[Path, dict[str, list[dict]], dict[str, bool]]) -> None:
    page, receipts, labels = replayed
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, timeout=120, check=True).stdout.decode()  # fmt: skip
    parsed = Rows()
    parsed.feed(dom)
    assert set(parsed.rows) == set(receipts)
    assert parsed.summary.startswith(f"{QUESTIONS * len(receipts)} jobs")
    for tc, rs in receipts.items():
        cells = parsed.rows[tc]
        n = len(rs)
        correct = sum(labels[r["job_id"]] for r in rs)
        cost = sum(r["total_cost_usd"] for r in rs)
        assert cells[1] == str(n) == str(QUESTIONS)
        assert cells[2] == f"{sum(1 for r in rs if r['triggers']) / n:.1%}"
        assert cells[3] == f"{sum(1 for r in rs if r['decision'] in ('arbiter', 'majority')) / n:.1%}"
        assert cells[4] == f"{sum(1 for r in rs if r.get('changed_vs_default')) / n:.1%}"
        assert cells[5] == f"{correct / n:.1%} ({correct}/{n})"
        assert cells[6] == f"${cost / n:.6f}"
        assert cells[7] == (f"${cost / correct:.6f}" if correct else "–")
        assert cells[8] == f"{_pct([r['latency_ms'] for r in rs], 50):.0f}"
        assert cells[9] == f"{_pct([r['latency_ms'] for r in rs], 95):.0f}"
        panels = [r for r in rs if any(s["lane"] == "panel" for s in r["lanes"])]
        flagged = len(panels) >= 5 and not any(r.get("changed_vs_default") for r in panels)
        assert (f'data-flag-for="{tc}"' in dom) == flagged, tc
    assert 'data-flag-for="eval_echo-panel"' in dom and "escalates without gain: the panel ran on 16 jobs" in dom
    assert dom.count("<svg") == 4 and dom.count("class=\"receipt\"") == QUESTIONS * len(receipts)
    some = next(iter(receipts.values()))[0]["job_id"]
    assert f'id="job-{some}"' in dom


def test_chromium_screenshot_is_a_full_page_with_the_charts_drawn(replayed: tuple[Path, dict, dict]) -> None:
    from PIL import Image

    page, _, _ = replayed
    SCREENSHOT.unlink(missing_ok=True)
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={SCREENSHOT}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(SCREENSHOT).convert("RGB")
    assert img.size == (WIDTH, HEIGHT)
    colours = img.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, "a blank or near-blank page"
    counts = {rgb: n for n, rgb in colours}
    assert counts.get((0x1F, 0x77, 0xB4), 0) > 100, "no chart line in the first series' colour"
    white = counts.get((255, 255, 255), 0)
    assert white < WIDTH * HEIGHT * 0.98, "almost all white"
