"""The user guide's "bring your own data" example runs as written."""

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bring_your_own_data_example_runs(capsys):
    runpy.run_path(str(ROOT / "docs" / "examples" / "bring_your_own_data.py"),
                   run_name="__main__")
    out = capsys.readouterr().out
    assert "scene 0: azimuth" in out and "skipped scenes: none" in out
    assert "sqrt(CRB) azimuth [deg]" in out
    # its own estimator scored beside the learned localizer: 3 scenes at 15 dB, one source
    # of scene 0 dropped (K wrong in 1 scene of 3), every other paired within the gate
    assert "learned at 15 dB: K accuracy" in out
    assert "mine at 15 dB: K accuracy 0.67, F1 0.96" in out and "F1 difference" in out


def test_the_readme_python_snippet_runs_as_written():
    """The README's "Your own data, in Python" block, executed as it stands."""
    import math
    import re

    import torch

    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Your own data, in Python\n```python\n(.*?)```", text, re.S)
    assert block is not None
    torch.set_num_threads(1)
    names: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), names)
    est, res = names["est"], names["res"]
    assert est["azimuth_deg"].shape == (8, 5) and len(res.records()) == int(est["K"].sum())
    assert not res.bad and all(not math.isnan(r["range_m"]) for r in res.records())


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped,
    spaces to hyphens, a repeated heading suffixed -1, -2, ..."""
    import re

    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_the_docs_links_resolve():
    """Every relative link of the README and docs/ names a file that exists, and every
    #anchor a heading of its page (docs/results.md was split in two: its log keeps the
    history under the same headings)."""
    import re

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_every_command_option_is_in_the_guide_and_its_table_rows_render():
    """Each option of each command (or its negation) appears in docs/guide.md, and each
    row of the guide's command table has its 3 cell borders: an unescaped | inside a cell
    (`--crb deterministic|stochastic` was one) cut the evaluate row where it stood."""
    import re

    import typer

    from risloc.cli.main import app

    guide = (ROOT / "docs" / "guide.md").read_text()
    group = typer.main.get_command(app)
    commands = [("risloc", group), *group.commands.items()]
    missing = [f"{name} {p.opts[0]}" for name, command in commands for p in command.params
               if p.param_type_name == "option" and not any(
                   re.search(re.escape(o) + r"(?![\w-])", guide)
                   for o in p.opts + p.secondary_opts if o.startswith("--"))]
    assert not missing, f"options not in docs/guide.md: {missing}"
    rows = [line for line in guide.splitlines() if line.startswith("| `risloc ")]
    assert len(rows) >= len(group.commands) - 1
    assert all(len(re.findall(r"(?<!\\)\|", row)) == 3 for row in rows), \
        [row[:40] for row in rows if len(re.findall(r"(?<!\\)\|", row)) != 3]


def test_every_option_the_docs_give_a_command_is_one_of_its_options():
    """The converse: each --option the guide or the README gives a command exists in that
    command with that spelling: in a code block's `risloc CMD ...` line, in an inline
    `risloc CMD ...` (or `CMD ...`) span, and in a command table row's spans (the row's
    command unless the span names another). A list option's help says how to give several
    values (a repeated --K kept only the last one, silently)."""
    import re

    import typer

    from risloc.cli.main import app

    group = typer.main.get_command(app)
    own = {name: {o for p in command.params for o in p.opts + p.secondary_opts}
           for name, command in [("risloc", group), *group.commands.items()]}
    names = "|".join(sorted(map(re.escape, own), key=len, reverse=True))
    option = r"(?<![\w-])(--[A-Za-z][\w-]*)"
    wrong = []

    def check(where, command, text):
        wrong.extend(f"{where}: {command} {o}" for o in re.findall(option, text)
                     if o not in own[command])

    for page in (ROOT / "docs" / "guide.md", ROOT / "README.md"):
        text = page.read_text()
        for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                m = re.search(rf"\brisloc\s+({names})(?![\w-])", line)
                if m:
                    check(page.name, m.group(1), line[m.end():])
        for line in re.sub(r"```.*?```", "", text, flags=re.S).splitlines():
            row = re.match(rf"\| `risloc ({names})(?![\w-])", line)
            for span in re.findall(r"`([^`]+)`", line):
                m = re.match(rf"(?:risloc\s+)?({names})(?![\w-])", span)
                if m or row:
                    check(page.name, m.group(1) if m else row.group(1), span)
    assert not wrong, f"options the docs give a command it lacks: {wrong}"
    evaluate = typer.main.get_command(app).commands["evaluate"]
    (K,) = [p for p in evaluate.params if "--K" in p.opts]
    assert "comma-separated" in K.help


def test_the_readme_s_demo_table_is_the_recorded_run():
    """Each number of the README's demo table is benchmarks/results/demo.txt's, rounded to
    the digits the README shows (the file is the run the README cites)."""
    import re

    number = r"-?\d+(?:\.\d+)?"

    def rows(lines, bar):
        out = {}
        for line in lines:
            cells = [c.strip() for c in line.strip().strip(bar).split(bar)]
            if len(cells) > 2 and cells[0] in ("learned", "classical"):
                out[(cells[0], cells[1])] = [n for c in cells[2:] for n in re.findall(number, c)]
        return out

    readme = rows((ROOT / "README.md").read_text().splitlines(), "|")
    recorded = rows((ROOT / "benchmarks" / "results" / "demo.txt").read_text().splitlines(),
                    "│")
    assert len(readme) == 10 and readme.keys() == recorded.keys()
    wrong = []
    for key, shown in readme.items():
        measured = recorded[key][1:]  # drop the file's scene count
        assert len(shown) == len(measured), key
        for s, m in zip(shown, measured):
            digits = len(s.partition(".")[2])
            if abs(float(s) - float(m)) > 0.5 * 10.0 ** -digits + 1e-9:
                wrong.append(f"{key}: README {s}, demo.txt {m}")
    assert not wrong, wrong


def test_the_results_page_s_versus_tables_are_the_recorded_run():
    """Each number of docs/results.md's eight learned-vs-classical tables is
    benchmarks/results/versus.json's (the run the section cites), rounded to the digits the
    page shows."""
    import json
    import re

    rows = json.loads((ROOT / "benchmarks" / "results" / "versus.json").read_text())["rows"]
    lines = (ROOT / "docs" / "results.md").read_text().splitlines()
    medians = ["azimuth_median_deg", "elevation_median_deg", "range_median_m"]
    checked, wrong = 0, []
    for head in [i for i, line in enumerate(lines) if re.match(r"#### K (un)?known, SNR", line)]:
        title = lines[head]
        known_K, snr_given = "K known" in title, "SNR given" in title
        spread = 12.0 if "spread 12 dB" in title else 0.0
        for line in lines[head + 1:head + 12]:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not re.fullmatch(r"-?\d+", cells[0]):
                continue
            (row,) = [r for r in rows if r["snr_db"] == float(cells[0])
                      and r["known_K"] == known_K and r["snr_given"] == snr_given
                      and r["power_spread_db"] == spread]
            learned, classical = row["learned"], row["classical"]
            measured = ([] if known_K else [learned["K_accuracy"], classical["K_accuracy"]]) + [
                learned["f1"], classical["f1"],
                learned["azimuth_median_deg"], classical["azimuth_median_deg"],
                *(row["ratio"][m] for m in medians), *(row["ratio_common"][m] for m in medians)]
            shown = [n for c in cells[1:] for n in re.findall(r"\d+\.\d+|\d+", c)]
            assert len(shown) == len(measured), (title, cells[0])
            for s, m in zip(shown, measured):
                checked += 1
                if abs(float(s) - m) > 0.5 * 10.0 ** -len(s.partition(".")[2]) + 1e-9:
                    wrong.append(f"{title} {cells[0]} dB: page {s}, versus.json {m:.4g}")
    assert checked == 4 * 6 * 12 + 4 * 6 * 10
    assert not wrong, wrong


def test_the_results_page_s_gpu_step_and_scaleout_tables_are_the_recorded_runs():
    """docs/results.md's H200 training-step table and its scale-out training table are the
    numbers of the result files they cite (device_h200_4d7138b_*.json,
    device_h200_stop42_default_step.json, scaleout.json), rounded to the digits shown."""
    import json
    import re

    results = ROOT / "benchmarks" / "results"
    lines = (ROOT / "docs" / "results.md").read_text().splitlines()

    def cells(line):
        return [re.sub(r"[*`]", "", c).strip() for c in line.strip().strip("|").split("|")]

    def close(shown, value):
        return abs(float(shown) - value) <= 0.5 * 10.0 ** -len(shown.partition(".")[2]) + 1e-9

    step_files = {"AMP": "4d7138b_amp", "FP32": "4d7138b_fp32",
                  "AMP, prefetch=process": "4d7138b_process",
                  "FP32, prefetch=process": "4d7138b_fp32_process",
                  "AMP, cuda_graphs=true": "4d7138b_graphs",
                  "FP32, cuda_graphs=true": "4d7138b_fp32_graphs",
                  "the new default (AMP and graphs), after the fix": "stop42_default_step"}
    keys = ["seconds_per_step", "step_on_ready_batch_s", "epoch_s_per_step", "simulate_batch_s"]
    wrong, seen = [], set()
    for line in lines:
        c = cells(line)
        if len(c) == 5 and c[0] in step_files:
            run = json.loads((results / f"device_h200_{step_files[c[0]]}.json").read_text())
            seen.add(c[0])
            for shown, key in zip(c[1:], keys):
                if not close(shown, run["training"][0][key]):
                    wrong.append(f"{c[0]} {key}: page {shown}, json {run['training'][0][key]:.4g}")
    assert seen == set(step_files), set(step_files) - seen

    scaleout = json.loads((results / "scaleout.json").read_text())["training"]
    by_setting = {r["setting"].split(" (")[0]: r for r in scaleout}
    found = 0
    for line in lines:
        c = cells(line)
        m = re.match(r"(\d process(es)? x \d threads?)", c[0]) if len(c) == 3 else None
        if m and m.group(1) in by_setting:
            found += 1
            row = by_setting[m.group(1)]
            for shown, key in zip(c[1:], ["seconds_per_step", "scenes_per_s"]):
                if not close(shown, row[key]):
                    wrong.append(f"scale-out {c[0]} {key}: page {shown}, json {row[key]:.4g}")
    assert found == 3
    assert not wrong, wrong
