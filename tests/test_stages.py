"""fgrlhf.pipelines.stages: the resumable stage runner of `fgrlhf demo` and the paper-table benchmarks."""

import json

import pytest

from fgrlhf.pipelines.stages import CommandFailed, Stages, StoppedAfter, run_command


def _writes(path, calls):
    def step():
        calls.append(path.name)
        path.write_text("{}\n")

    return step


def test_without_timings_an_existing_output_is_done(tmp_path):
    out, calls = tmp_path / "a.json", []
    stages = Stages()
    assert stages.run(out, _writes(out, calls)) == out
    stages.run(out, _writes(out, calls))
    assert calls == ["a.json"]


def test_stage_that_failed_after_writing_its_output_runs_again(tmp_path):
    """`fgrlhf edit` writes its records and exits 3 when some items failed: a re-run must retry that stage,
    not take the output file as proof that it finished."""
    done, timings = tmp_path / "edits.jsonl", tmp_path / "timings.json"
    done.write_text("{}\n")
    calls = []

    def fails():
        calls.append("edits")
        raise CommandFailed(["edit"], 3)

    with pytest.raises(CommandFailed, match="exited with status 3"):
        Stages(timings).run(done, fails, "edits")
    assert not timings.exists()

    Stages(timings).run(done, _writes(done, calls), "edits")  # a fresh runner, as in a re-run
    assert calls == ["edits", "edits.jsonl"]
    assert set(json.loads(timings.read_text())) == {"edits"}
    Stages(timings).run(done, _writes(done, calls), "edits")  # finished and recorded: skipped
    assert calls == ["edits", "edits.jsonl"]


def test_a_step_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="finished without writing"):
        Stages().run(tmp_path / "never.json", lambda: None, "never")


def test_until_stops_after_that_stage_whether_it_ran_or_was_done(tmp_path):
    out, calls = tmp_path / "a.json", []
    with pytest.raises(StoppedAfter, match="pairs"):
        Stages(until="pairs").run(out, _writes(out, calls), "pairs")
    with pytest.raises(StoppedAfter):
        Stages(until="pairs").run(out, _writes(out, calls), "pairs")
    assert calls == ["a.json"]
    Stages(until="pairs").run(tmp_path / "b.json", _writes(tmp_path / "b.json", calls), "edits")


def test_run_command_raises_on_a_nonzero_exit_and_can_keep_stdout_for_a_table(tmp_path, monkeypatch, capsys):
    import fgrlhf.runtime.plan_cli

    def fake_main(args):
        print('{"line": 1}')
        return 0 if args.config == "ok.yaml" else 4

    monkeypatch.setattr(fgrlhf.runtime.plan_cli, "main", fake_main)
    run_command("plan", "--config", "ok.yaml", stdout_to_stderr=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert '{"line": 1}' in captured.err
    with pytest.raises(CommandFailed) as failed:
        run_command("plan", "--config", "bad.yaml")
    assert failed.value.code == 4
    assert "fgrlhf plan --config bad.yaml exited with status 4" in str(failed.value)
    assert '{"line": 1}' in capsys.readouterr().out
