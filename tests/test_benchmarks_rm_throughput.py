"""benchmarks/rm_throughput.py --quick: fgrlhf train-rm and TRL's RewardTrainer on the same pairs, tiny backbone."""

import json
import math

import pytest

pytest.importorskip("trl", reason="TRL is not installed: pip install 'fgrlhf[bench]' (trl==1.12.0)")

from benchmarks import rm_throughput
from fgrlhf.config import load_config
from fgrlhf.reward.train import RMTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_more_pairs_than_the_data_holds_is_refused(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(SystemExit, match="1 pairs, --pairs asks for 16"):
        rm_throughput.main(["--quick", "--data", str(data), "--workdir", str(tmp_path / "w")])


@pytest.mark.slow
def test_rm_throughput_quick(tmp_path, capsys):
    report, png = tmp_path / "rm.json", tmp_path / "rm.png"
    args = ["--quick", "--json", str(report), "--plot", str(png), "--workdir", str(tmp_path / "w")]
    assert rm_throughput.main(args) == 0
    result = json.loads(report.read_text())
    fg, trl = result["fgrlhf"], result["trl"]
    for run in (fg, trl):
        assert len(run["step_seconds_all"]) == len(run["cpu_seconds_all"]) == 2  # --quick: 2 measured steps
        assert run["tokens_per_second"] > 0 and run["cpu_seconds_per_token"] > 0
    # Both trained on the same token ids in batches of 4 pairs: each measured step's real tokens (fgrlhf's
    # from its batch order, TRL's own count) lie between those of the 4 shortest and the 4 longest pairs.
    pairs = [json.loads(line) for line in (tmp_path / "w" / "pairs.jsonl").read_text().splitlines()]
    cfg = load_config(RMTrainConfig, rm_throughput.CONFIGS["tiny"], ["kind=sequence"])
    sizes = sorted(rm_throughput.pair_tokens(e) for e in rm_throughput.encoded(cfg, pairs))
    assert len(sizes) == 16
    assert all(sum(sizes[:4]) <= t <= sum(sizes[-4:]) for t in fg["tokens_all"] + trl["tokens_all"])
    ratio = result["ratio_cpu_seconds_per_token_fgrlhf_vs_trl"]
    assert math.isfinite(ratio) and ratio == pytest.approx(fg["cpu_seconds_per_token"] / trl["cpu_seconds_per_token"])
    assert math.isfinite(result["ratio_tokens_per_second_fgrlhf_vs_trl"])
    out = capsys.readouterr().out
    assert out.startswith("RM training, tiny Llama, 16 pairs") and "ratio_cpu_seconds_per_token_fgrlhf_vs_trl" in out
    assert png.stat().st_size > 0
