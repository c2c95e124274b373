"""fgrlhf.pipelines.stages: the resumable stage runner of `fgrlhf demo`, `fgrlhf paper` and the paper-table
benchmarks."""

import json

import pytest

from fgrlhf.pipelines.stages import CommandFailed, Pipeline, StageChanged, Stages, StoppedAfter, run_command


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


def test_pipeline_keys_each_stage_skips_it_under_the_same_key_and_refuses_another(tmp_path):
    rules, calls, lines = tmp_path / "rules.yaml", [], []
    rules.write_text("a: 1\n")
    out = tmp_path / "data" / "edits.jsonl"
    out.parent.mkdir()

    def pipeline() -> Pipeline:  # a fresh one per run, as in a re-run into the same directory
        return Pipeline(tmp_path, "fgrlhf_test_stage", 1, say=lines.append)

    pipeline().stage(out, _writes(out, calls), key={"n": 8}, inputs=(rules,))
    assert calls == ["edits.jsonl"]
    # named by its path under the root; the seconds and the key are kept beside the outputs
    assert set(json.loads((tmp_path / "stage_seconds.json").read_text())) == {"data/edits.jsonl"}
    assert set(json.loads((tmp_path / "stage_keys.json").read_text())) == {"data/edits.jsonl"}
    assert any(line.startswith("stage 1/1 data/edits.jsonl:") and "ETA" in line for line in lines)

    pipeline().stage(out, _writes(out, calls), key={"n": 8}, inputs=(rules,))
    assert calls == ["edits.jsonl"] and "done earlier" in lines[-2]
    with pytest.raises(StageChanged, match=r"stage data/edits\.jsonl"):
        pipeline().stage(out, _writes(out, calls), key={"n": 16}, inputs=(rules,))
    rules.write_text("a: 2\n")  # an input file's bytes are part of the key
    with pytest.raises(StageChanged):
        pipeline().stage(out, _writes(out, calls), key={"n": 8}, inputs=(rules,))
    assert calls == ["edits.jsonl"]


def test_a_failed_command_ends_the_pipeline_with_one_line_naming_its_stage(tmp_path, monkeypatch):
    import fgrlhf.pipelines.stages as stages

    def fails(*argv, stdout_to_stderr=False):
        raise CommandFailed([str(a) for a in argv], 3)

    monkeypatch.setattr(stages, "run_command", fails)
    pipeline = Pipeline(tmp_path, "fgrlhf_test_stage", resume="resubmit with the same --out")
    with pytest.raises(SystemExit) as stopped:
        pipeline.command("edits", tmp_path / "edits.jsonl", ["edit", "--input", "x"], key=1)
    assert str(stopped.value) == "stage edits failed (exit 3); fix the cause and resubmit with the same --out"
    with pytest.raises(SystemExit, match=r"^stage rm failed"):  # a step that runs a command among other work
        pipeline.stage(tmp_path / "timing.json", lambda: pipeline.run_command("train-rm"), "rm", key=1)
    assert not (tmp_path / "stage_seconds.json").exists()


def test_trusted_outputs_from_a_store_without_timings_or_keys_are_reused(tmp_path):
    """The benchmarks' work dirs cached every stage before the timings and keys files existed: a re-run (e.g.
    training_hours.py continuing an interrupted run) reuses those outputs, then keys what it runs."""
    old, new, calls, lines = tmp_path / "old.json", tmp_path / "new.json", [], []
    old.write_text("{}\n")

    def pipeline() -> Pipeline:
        return Pipeline(tmp_path, "fgrlhf_test_stage", say=lines.append, trust_outputs=True)

    pipeline().stage(old, _writes(old, calls), key="any")
    pipeline().stage(new, _writes(new, calls), key="v1")
    assert calls == ["new.json"]
    assert "stage 1 new.json: 0 s" in lines and not any("ETA" in line for line in lines)  # no total planned
    assert set(json.loads((tmp_path / "stage_keys.json").read_text())) == {"new.json"}
    with pytest.raises(StageChanged):
        pipeline().stage(new, _writes(new, calls), key="v2")
