import json

from conftest import tiny_config

from nextoken.training.loop import train


def test_tiny_run_trains_and_writes_contract_files(bytes_data, tmp_path):
    res = train(tiny_config(bytes_data), tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    assert (run / "config.toml").is_file() and (run / "tokenizer.json").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "elapsed_s"} <= set(train_rows[0])
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert res["bits_per_byte"] > 0 and (run / "checkpoints" / "latest").is_file()
