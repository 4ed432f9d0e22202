"""report.html: the table, the inlined plots and the sample browser -- rendered, escaped, and run in a browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from selfcorrect.html_report import episode_view, render, word_diff, write_report
from selfcorrect.report import row_cells

HOSTILE = '<img src=x onerror="document.body.dataset.pwned=1"></script><script>document.body.dataset.pwned=1</script>'


def _summary(acc1: float, acc2: float, n: int = 4) -> dict:
    return {"n": n, "attempts": 2, "accuracy": [acc1, acc2], "delta": acc2 - acc1, "delta_i2c": 0.25,
            "delta_c2i": 0.0, "edit_distance_ratio": 0.1, "copy_rate": 0.5,
            "ci95": {"accuracy": [[0.0, 0.5], [0.25, 0.75]], "delta": [0.0, 0.5]}}


def _records() -> list[dict]:
    def attempt(text, answer, reward, reason=""):
        return {"text": text, "answer": answer, "reward": reward, "reason": reason, "tokens": 3, "truncated": False}

    return [
        {"id": "p0", "sample": 0, "question": "2 + 2?", "gold": "4",
         "attempts": [attempt("2 + 2 = 5", "5", 0.0, "wrong answer '5' (expected '4')"), attempt("2 + 2 = 4", "4", 1.0)]},
        {"id": "p1", "sample": 0, "question": "3 + 3?", "gold": "6",
         "attempts": [attempt("6", "6", 1.0), attempt("6", "6", 1.0)]},
        {"id": "p2", "sample": 0, "question": "5 + 5?", "gold": "10",
         "attempts": [attempt("10", "10", 1.0), attempt("I give up " + HOSTILE, None, 0.0, "no parsable answer")]},
        {"id": "p3", "sample": 0, "question": "unique-needle 7 + 1?", "gold": "8",
         "attempts": [attempt("hmm", None, 0.0, "no parsable answer"), attempt("hmm", None, 0.0, "no parsable answer")]},
    ]


def test_word_diff_and_filter_tags():
    assert word_diff("76 + 7 = 85", "76 + 7 = 83") == [["=", "76 + 7 = "], ["-", "85"], ["+", "83"]]
    assert word_diff("same", "same") == [["=", "same"]]
    views = [episode_view(r) for r in _records()]
    assert [v["tags"] for v in views] == [["edited", "wrong-right"], ["copied"], ["edited", "right-wrong", "unparsable"],
                                          ["copied", "unparsable"]]
    assert views[0]["gold"] == "4" and views[0]["attempts"][0]["reason"].startswith("wrong answer")


def test_the_page_is_self_contained_and_never_embeds_model_text_as_html(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot = tmp_path / "accuracy.png"
    plt.figure(figsize=(2, 2)).savefig(plot)
    page = render("a run", {"base": _summary(0.25, 0.5), "trained": _summary(0.5, 0.75)}, _records(), [plot])
    for cell in row_cells(_summary(0.5, 0.75)):                  # a CI goes under its value
        value, _, ci = cell.partition(" [")
        assert (f'<td>{value}<span class="ci">[{ci}</span></td>' if ci else f"<td>{cell}</td>") in page
    assert sum(" [" in cell for cell in row_cells(_summary(0.5, 0.75))) >= 3
    boxed = page.count('<div class="table-box"><table class="metrics"')      # wide tables scroll in a box
    assert boxed >= 1 and boxed == page.count('<table class="metrics"')
    assert "data:image/png;base64," in page and "accuracy.png" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page   # nothing fetched
    assert "<img src=x" not in page and "<script>document" not in page                 # escaped in the JSON
    data = page.split('<script type="application/json" id="data">')[1].split("</script>")[0]
    assert HOSTILE in json.loads(data)[2]["attempts"][1]["text"]                        # ... and intact in it
    assert "all (4)" in page and "wrong → right (1)" in page and "unparsable (2)" in page


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _dom(browser: str, page: Path, fragment: str = "") -> str:
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=3000", "--dump-dom", page.as_uri() + fragment],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (make setup-browser installs it)")
@pytest.mark.long
def test_the_sample_browser_runs_in_headless_chromium(tmp_path):
    """Loads with no script error; the filters, search and run selector change what is shown; a
    screenshot is written (committed under docs/ from a real run)."""
    import re

    browser = _chromium()
    records = [{**r, "group": "score seed 0"} for r in _records()] + [{**_records()[0], "group": "star seed 0"}]
    page = write_report(tmp_path / "report.html", "browser test", {"base": _summary(0.25, 0.5)}, records)

    def shown(fragment: str = "") -> int:
        dom = _dom(browser, page, fragment)
        body = re.search(r"<body[^>]*>", dom).group(0)
        assert 'data-ready="true"' in body and "data-errors" not in body and "data-pwned" not in body, body
        return int(re.search(r'data-shown="(\d+)"', body).group(1))

    assert shown() == 5
    assert shown("#filter=wrong-right") == 2
    assert shown("#filter=right-wrong") == 1
    assert shown("#filter=copied") == 2
    assert shown("#filter=unparsable") == 2
    assert shown("#q=unique-needle") == 1
    assert shown("#group=star%20seed%200") == 1
    assert shown("#filter=edited&group=score%20seed%200") == 2
    shot = tmp_path / "shot.png"
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600",
                          f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (make setup-browser installs it)")
def test_a_seven_method_table_never_widens_the_page(tmp_path):
    """The metrics table of a 7-method comparison (every column, CIs): the page never scrolls sideways at
    1,000 px (the table scrolls inside its box), and at 1,400 px the table fits whole.  Before, it was
    1,781 px wide and the page scrolled at both widths."""
    import random
    import re

    from selfcorrect.compare import pooled_summary

    rng = random.Random(0)

    def attempt(right):
        return {"text": "The final answer is 12.", "answer": "12", "reward": float(right), "truncated": False,
                "tokens": 7, "formatted": True, "lenient": float(right)}

    rows = [{"id": f"p{i}", "attempts": [attempt(rng.random() < 0.6), attempt(rng.random() < 0.8)]}
            for i in range(200)]
    summaries = {m: pooled_summary(rows) for m in ("score", "single-turn", "prompting", "stage2-only",
                                                   "no-shaping", "star:sft_keep=D+", "pair-sft")}
    write_report(tmp_path / "report.html", "seven methods", summaries, [], [])
    (tmp_path / "measure.html").write_text(
        '<!DOCTYPE html><html><body style="margin:0">'
        '<iframe id="narrow" src="report.html" style="width:1000px;height:600px;border:0"></iframe>'
        '<iframe id="wide" src="report.html" style="width:1400px;height:600px;border:0"></iframe><script>'
        'let loaded = 0; for (const id of ["narrow", "wide"]) document.getElementById(id).onload = () => {'
        ' if (++loaded < 2) return; for (const name of ["narrow", "wide"]) {'
        ' const d = document.getElementById(name).contentDocument, t = d.getElementById("metrics");'
        ' document.body.setAttribute("data-" + name, [d.documentElement.scrollWidth,'
        ' d.documentElement.clientWidth, Math.ceil(t.getBoundingClientRect().width),'
        ' t.parentElement.clientWidth].join(",")); } };</script></body></html>')
    dom = _dom(_chromium(), tmp_path / "measure.html")
    sizes = {name: [int(x) for x in re.search(f'data-{name}="([^"]+)"', dom).group(1).split(",")]
             for name in ("narrow", "wide")}
    page, window, table, box = sizes["narrow"]
    assert page == window and table > box                # the table scrolls in its box, the page does not
    page, window, table, box = sizes["wide"]
    assert page == window and table <= box               # and fits whole at 1,400 px
