"""The pieces every command shares: an error is one `error:` line and exit code 2 whatever
its kind and text, numbers lists, the --overwrite rules of a model and its card, and the
system a simulated sweep runs on."""

import io
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from risloc.cli.common import (
    fov_setting,
    handle_errors,
    parse_fov,
    parse_numbers,
    print_table,
    refuse_existing_model,
    shell_arg,
    sweep_config,
)


def _failing(err: Exception) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @handle_errors
    def command() -> None:
        raise err

    return app


@pytest.mark.parametrize("err", [
    PermissionError(13, "Permission denied", "/data/out.csv"),
    IsADirectoryError(21, "Is a directory", "/data/out"),
    ValueError("the file /data/run [2024]/[red]scenes[/red].h5 holds no 'y'"),
    FileNotFoundError("checkpoint not found: /" + "/".join(["a-long-folder-name"] * 12) + ".pt"),
    TypeError("K must be a whole number, got 'x'"),
])
def test_an_error_is_one_line_with_exit_code_2_and_its_text_as_it_is(err):
    """docs/guide.md: errors in input give one `error:` line and exit code 2: an OSError
    other than a missing file (a folder or file that cannot be written) too, text in square
    brackets (a path's) kept as it is, a long path not broken at the console's width."""
    res = CliRunner().invoke(_failing(err), [])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {err}", res.output


def test_ctrl_c_in_a_command_exits_130_with_its_message():
    res = CliRunner().invoke(_failing(KeyboardInterrupt()), [])
    assert res.exit_code == 130 and "interrupted" in res.output


def test_a_numbers_list_may_be_empty_only_where_allowed():
    assert parse_numbers("", "--snr-db", allow_empty=True) == ()
    assert parse_numbers(" 1, 2 ,3", "--K", kind=int) == (1, 2, 3)
    with pytest.raises(ValueError, match="--snr-db: no values given"):
        parse_numbers(" , ", "--snr-db")
    with pytest.raises(ValueError, match="--K: expected comma-separated whole numbers"):
        parse_numbers("1,2.5", "--K", kind=int)


def test_fov_options_replace_the_fields_named_and_keep_the_default_s_others():
    """--fov name=low,high: spaces around the name and numbers are allowed; the fields not
    given keep the default box; none given is None; a field given twice, a misspelt one and
    values the box refuses are named."""
    from risloc.config import FieldOfView

    assert parse_fov(None) is None and parse_fov([]) is None
    fov = parse_fov([" range_m = 0.1, 1.0 ", "azimuth_deg=-45,45"])
    assert fov == FieldOfView(azimuth_deg=(-45, 45), range_m=(0.1, 1.0))
    assert fov.elevation_deg == FieldOfView().elevation_deg
    # a record's value: azimuth, elevation, range, in that order (records already written)
    assert fov_setting(fov) == [[-45.0, 45.0], [-30.0, 30.0], [0.1, 1.0]]
    assert fov_setting(None) is None
    with pytest.raises(ValueError, match="^--fov: range_m is given twice$"):
        parse_fov(["range_m=0.1,1", "range_m=0.2,2"])
    with pytest.raises(ValueError,
                       match=r"unknown field 'elevation' \(did you mean elevation_deg\?\)"):
        parse_fov(["elevation=-10,10"])
    with pytest.raises(ValueError, match="^--fov: field of view range_m must satisfy"):
        parse_fov(["range_m=0,1"])


def test_a_model_card_of_the_user_s_is_kept_whatever_the_case_of_the_model_s_suffix(tmp_path):
    """M.PT's card is M.json as m.pt's is: a file of the user's there is replaced only with
    --overwrite."""
    (tmp_path / "M.json").write_text('{"my": "notes"}')
    for name in ("M.PT", "M.Pth"):
        with pytest.raises(ValueError, match="M.json exists and would be replaced"):
            refuse_existing_model(tmp_path / name, False, tmp_path / "in.pt")
        refuse_existing_model(tmp_path / name, True, tmp_path / "in.pt")
        # the model rewritten in place: its card is its own, updated (a second mutation
        # review: unchecked)
        refuse_existing_model(tmp_path / name, False, tmp_path / name)


@pytest.fixture(scope="module")
def model_8x8(tmp_path_factory):
    """A small untrained model of an 8x8 RIS (not the default system)."""
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.training import Trainer, load_train_config

    out = tmp_path_factory.mktemp("n8")
    cfg = load_train_config(None, ["system.N_H=8", "system.N_V=8", "model.width=8",
                                   "model.dilations=[1]", "model.hidden=8", f"out_dir={out}"])
    return save_checkpoint(out / "n8.pt", Trainer(cfg).state())


def test_a_sweep_runs_on_the_model_s_system_as_changed_by_set_or_as_a_config_names_it(
        tmp_path, model_8x8, capsys):
    """--set system.* changes the model's system (a smaller K_max is accepted) and says so;
    --config with --checkpoint: the config's system, checked against the model's."""
    cfg = sweep_config(None, ["system.K_max=2"], model_8x8)
    assert (cfg.system.N_H, cfg.system.K_max) == (8, 2)
    said = " ".join(capsys.readouterr().err.split())
    assert "system, changed by --set" in said
    cfg = sweep_config(None, None, model_8x8)
    said = " ".join(capsys.readouterr().err.split())
    assert cfg.system.N_H == 8 and "system (" in said and "changed by --set" not in said
    named = tmp_path / "sys.yaml"
    named.write_text("system:\n  N_H: 8\n  N_V: 8\n")
    assert sweep_config(named, None, model_8x8).system.N_V == 8
    named.write_text("system:\n  N_H: 8\n  N_V: 12\n")
    with pytest.raises(ValueError, match="N_V 12 .model: 8."):
        sweep_config(named, None, model_8x8)


def test_a_sweep_draws_its_scenes_in_the_model_s_field_of_view(tmp_path_factory, capsys):
    """A model trained on a narrower field of view searches only there: a sweep on it
    (evaluate or demo --checkpoint) draws its sources there too, not in the default box
    (which put most of them where the model cannot look), unless --set says otherwise."""
    from risloc.inference.checkpoint import save_checkpoint
    from risloc.training import Trainer, load_train_config

    out = tmp_path_factory.mktemp("fov")
    cfg = load_train_config(None, ["system.N_H=8", "system.N_V=8", "model.width=8",
                                   "model.dilations=[1]", "model.hidden=8", f"out_dir={out}",
                                   "scene.azimuth_deg=[-40, 40]", "scene.range_m=[0.3, 3]"])
    model = save_checkpoint(out / "fov.pt", Trainer(cfg).state())
    scene = sweep_config(None, None, model).scene
    assert (scene.azimuth_deg, scene.elevation_deg, scene.range_m) == (
        (-40.0, 40.0), (-30.0, 30.0), (0.3, 3.0))
    assert "sources in azimuth -40..40 deg" in " ".join(capsys.readouterr().err.split())
    assert sweep_config(None, ["scene.range_m=[1, 2]"], model).scene.range_m == (1.0, 2.0)


def test_a_model_of_the_default_system_and_another_field_of_view_says_where_it_draws(
        monkeypatch, capsys):
    """Only the field of view differs from the default: the sweep still says where its
    sources are drawn (a second mutation review: only a changed system was checked)."""
    from risloc.config import FieldOfView, RislocConfig

    monkeypatch.setattr("risloc.cli.common.model_system", lambda checkpoint, with_fov=False: (
        RislocConfig().system, FieldOfView(range_m=(0.5, 3.0))))
    cfg = sweep_config(None, None, Path("m.pt"))
    assert cfg.scene.range_m == (0.5, 3.0)
    assert "sources in azimuth -60..60 deg, elevation -30..30 deg, range 0.5..3 m" in " ".join(
        capsys.readouterr().err.split())


def test_shell_arg_is_one_shell_word_of_the_same_path_and_survives_rich_markup():
    import shlex

    from rich.console import Console

    for path in ("plain/s.h5", "my dir/it's é中.h5", "-x.h5", Path("a b/[bold]c.csv"),
                 "~/x.h5", "$HOME/*.h5"):
        text = str(path)
        want = f"./{text}" if text.startswith("-") else text  # not an option
        con = Console(width=300, record=True)
        con.print(f"risloc info {shell_arg(path)}")  # (printed as markup, as the CLI does)
        assert shlex.split(con.export_text().strip()) == ["risloc", "info", want], path


def test_a_name_rich_reads_as_a_closing_tag_is_printed_not_a_traceback(tmp_path):
    """An awkward-paths walk-through: `simulate --out 'c[/]d.h5'` wrote the file, then
    stopped with rich's MarkupError and a traceback; the message is now printed as it is."""
    from typer.testing import CliRunner

    from risloc.cli.main import app

    res = CliRunner().invoke(app, ["simulate", "--n", "2", "--out", str(tmp_path / "c[/]d.h5")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c[/]d.h5").exists()
    assert "c[/]d.h5" in " ".join(res.output.split())


def test_a_broken_pipe_quiets_the_console_and_the_command_goes_on(tmp_path):
    """`risloc train ... 2>&1 | head`: where the pipe's reader is gone, rich exited 1 at
    the next print (a training run ended before its model.pt, an evaluate before its
    plots); the console now drops the rest of its output (its file descriptor on
    /dev/null, so Python's flush at exit is quiet too) and returns."""
    import os

    from risloc.cli.common import _Console

    with open(tmp_path / "pipe.txt", "w") as f:
        c = _Console(file=f)
        c.on_broken_pipe()  # (rich raised SystemExit(1))
        assert c.quiet and os.readlink(f"/proc/self/fd/{f.fileno()}") == os.devnull
        c.print("dropped")
    assert (tmp_path / "pipe.txt").read_text() == ""


def test_a_broken_pipe_on_a_console_without_a_file_descriptor_leaves_no_file_open():
    """A console on a buffer (CliRunner's stdout, io.StringIO) has no descriptor to put
    /dev/null on: it is quieted and /dev/null is not opened (it was, and left open)."""
    import os

    from risloc.cli.common import _Console

    before = len(os.listdir("/proc/self/fd"))
    c = _Console(file=io.StringIO())
    c.on_broken_pipe()
    assert c.quiet and len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("width", [60, 80, 200])
def test_a_table_on_a_narrow_terminal_keeps_every_number_and_name_whole(width):
    """evaluate's table on a 60- or 80-column terminal: rich cut its cells to '0.04…' and
    'classic…'; each now stands whole (a cell wraps only between words), the table as wide
    as that needs (the terminal wraps its lines) and no wider where the terminal is wide."""
    from rich.console import Console
    from rich.table import Table

    heads = ("estimator", "SNR dB", "n", "K acc", "F1", "az med° (.67√CRB)",
             "el med° (.67√CRB)", "range med m (.67√CRB)", "ms/scene")
    rows = [(name, "-5", "400", "0.812 (±0.0123)", "0.9123 (±0.0456)", "0.0412 (0.0311)",
             "0.0612 (0.0456)", "0.1234 (0.0987)", "12.3")
            for name in ("learned", "classical", "music-samp", "music-samp+nfmle")]
    table = Table(title="simulated sweep")
    for head in heads:
        table.add_column(head, justify="right")
    for row in rows:
        table.add_row(*row)
    buf = io.StringIO()
    print_table(table, Console(file=buf, width=width, force_terminal=True, color_system=None))
    text = buf.getvalue()
    lines = [line.split("│") for line in text.splitlines()]
    assert "…" not in text
    for word in {w for row in (heads, *rows) for cell in row for w in cell.split()}:
        assert any(word == part.strip() or f" {word} " in f" {part} " for line in lines
                   for part in line), (word, text)
    assert max(map(len, text.splitlines())) <= max(width, 110), text


def test_a_word_wider_than_the_terminal_stays_whole_in_its_table():
    """A path in `risloc simulate`'s table, longer than the terminal is wide: one line."""
    from rich.console import Console
    from rich.table import Table

    path = "/data/" + "scenes_" * 12 + "test.h5"
    table = Table()
    table.add_column("field")
    table.add_column("value")
    table.add_row("file", path)
    buf = io.StringIO()
    print_table(table, Console(file=buf, width=60, force_terminal=True, color_system=None))
    assert path in buf.getvalue() and "…" not in buf.getvalue()


def test_parse_fov_names_the_field_of_a_misspelt_or_upper_case_one():
    from risloc.cli.common import parse_fov

    for text, near in (("RANGE_M=0.1,1", "range_m"), ("Azimuth_Deg=-45,45", "azimuth_deg"),
                       ("elevation=-10,10", "elevation_deg")):
        with pytest.raises(ValueError, match=f"did you mean {near}\\?"):
            parse_fov([text])
    assert parse_fov([" range_m = 0.1 , 1 "]).range_m == (0.1, 1.0)


def test_a_number_given_twice_or_not_finite_is_named():
    """(a mutation review of cli/common.py: neither check was exercised)"""
    with pytest.raises(ValueError, match="^--snr-db: 5 is given twice$"):
        parse_numbers("0,5,5", "--snr-db")
    for text in ("0,nan", "inf", "-inf,1"):
        with pytest.raises(ValueError, match="--snr-db: expected comma-separated finite numbers"):
            parse_numbers(text, "--snr-db")


def test_an_existing_file_is_replaced_only_with_overwrite_or_in_place(tmp_path):
    """(a mutation review of cli/common.py: refuse_existing's own rules were unchecked)"""
    from risloc.cli.common import refuse_existing

    out = tmp_path / "out.h5"
    refuse_existing(out, False)  # none there
    out.write_text("x")
    with pytest.raises(ValueError, match="out.h5 exists: pass --overwrite to replace it"):
        refuse_existing(out, False)
    refuse_existing(out, True)
    refuse_existing(out, False, inputs=(tmp_path / "." / "out.h5",))  # rewritten in place
    refuse_existing(tmp_path, False)  # a folder: left to the writer's checks


def test_a_fov_option_without_a_name_says_the_form_it_takes():
    with pytest.raises(ValueError, match="^--fov '0.1,1.0': expected name=low,high"):
        parse_fov(["0.1,1.0"])


def test_a_model_of_another_system_is_refused_naming_it_and_the_way_on(monkeypatch):
    from risloc.cli.common import check_model_serves
    from risloc.config import RislocConfig, SystemConfig

    monkeypatch.setattr("risloc.cli.common.model_system",
                        lambda checkpoint, with_fov=False: RislocConfig().system)
    check_model_serves(None, RislocConfig().system, "this file")
    other = SystemConfig(**{**RislocConfig().system.model_dump(), "N_V": 8})
    with pytest.raises(ValueError, match="^the shipped model: .*N_V.* on this file\\)$"):
        check_model_serves(None, other, "this file")
    with pytest.raises(ValueError, match="^m.pt: "):
        check_model_serves(Path("m.pt"), other, "this file")


def test_a_fov_refusal_names_both_boxes_and_the_alternative():
    from risloc.cli.common import refuse_fov
    from risloc.config import FieldOfView

    text = refuse_fov(FieldOfView(range_m=(0.1, 1.0)), FieldOfView(), "drop --fov")
    assert text.startswith("--fov azimuth -60..60 deg, elevation -30..30 deg, range 0.1..1 m:")
    assert "(azimuth -60..60 deg, elevation -30..30 deg, range 0.5..10 m)" in text
    assert text.endswith("or drop --fov")
