"""``wspsr report`` on the sample corpus: one self-contained page with every section, built from the shards."""

from __future__ import annotations

import re

import pytest

from jobs.report import main
from pipeline.eval.report import SECTIONS
from support.output import committed_rows


@pytest.mark.slow
def test_report_of_the_sample_corpus(sample_run, capsys):
    out, summary = sample_run
    assert main([str(out)]) == 0
    path = out / "report.html"
    assert str(path.resolve()) in capsys.readouterr().out
    page = path.read_text(encoding="utf-8")
    for key, title in SECTIONS:
        assert f'<section id="{key}"><h2>{title}</h2>' in page
    assert page.count('src="data:image/png;base64,') == 5  # hours, durations, rejects, characters per second, agreement
    # the kept sources that agree least with their speech, lowest first, with their scores from the corpus table
    agreement = page.split('<section id="agreement">')[1].split("</section>")[0]
    scored: dict[str, list[float]] = {}
    for row in committed_rows(out, "corpus"):
        if row["agreement_logprob"] is not None:
            scored.setdefault(row["source_id"], []).append(row["agreement_logprob"])
    lowest = min(scored, key=lambda k: sum(scored[k]) / len(scored[k]))
    listed = re.findall(r"<tr><td>[^<]*</td><td>([^<]+)</td>", agreement)
    assert listed[0] == lowest and len(listed) == min(15, len(scored))
    assert not re.search(r'(src|href)="(https?:|file:|//)', page)  # self-contained: nothing loaded from elsewhere
    rejects = committed_rows(out, "rejects")
    for reason in {r["reason"] for r in rejects}:
        assert f"<h3>{reason}</h3>" in page
    # A rejected transcript is quoted from the input, e.g. the all-uppercase one.
    uppercase = page.split("<h3>all_uppercase</h3>")[1].split("</ul>")[0]
    assert "<pre>" in uppercase and re.search(r"<pre>[^<]*[A-Z]{5}", uppercase)
    duplicates = page.split('<section id="duplicates">')[1]
    kept = {r["duplicate_of"] for r in rejects if r["reason"] == "duplicate"}
    assert kept and all(k in duplicates for k in kept)
    assert f"<td>{summary['inputs']['in']}</td>" in page


def test_report_of_a_folder_that_is_no_corpus(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no _commits" in capsys.readouterr().err
