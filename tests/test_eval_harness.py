"""lm-evaluation-harness through nextoken's model class (nextoken/eval/harness.py): offline, on local task YAMLs
over the very JSON lines `--task` reads, the harness's scores equal `--task`'s; loglikelihood_rolling and
generate_until agree with nextoken's own scoring and greedy sampling."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

pytest.importorskip("lm_eval")

from conftest import tiny_config  # noqa: E402
from test_eval_tasks import write_tasks  # noqa: E402

import nextoken  # noqa: E402
from nextoken.cli import main  # noqa: E402
from nextoken.data.tokenizer import eot_id  # noqa: E402
from nextoken.eval.harness import NextokenLM  # noqa: E402
from nextoken.eval.tasks import loglikelihoods  # noqa: E402
from nextoken.generate import generate  # noqa: E402
from nextoken.run import Run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CHOICE_YAML = """task: nt_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_bytes
"""
CLOZE_YAML = """task: nt_fill
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: context
doc_to_target: continuation
target_delimiter: ""
metric_list:
  - metric: acc
"""
ROLLING_YAML = """task: nt_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: bits_per_byte
"""


@pytest.fixture(scope="module")
def harness_setup(bpe_data, tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    folder = tmp_path_factory.mktemp("harness")
    mc, cloze = write_tasks(folder)
    texts = [{"text": f"def alpha_{i}(alpha, beta):\n    return alpha + beta\n" * (1 + 3 * i)} for i in range(3)]
    (folder / "rolling.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    yamls = folder / "yamls"
    yamls.mkdir()
    for name, template, data in (("choice", CHOICE_YAML, mc), ("fill", CLOZE_YAML, cloze),
                                 ("rolling", ROLLING_YAML, folder / "rolling.jsonl")):
        (yamls / f"{name}.yaml").write_text(template.format(data=data))
    run = folder / "run"
    nextoken.train(tiny_config(bpe_data), run, quiet=True)
    return run, mc, cloze, yamls


def test_harness_scores_equal_task_scores(harness_setup, capsys):
    run, mc, cloze, yamls = harness_setup
    assert main(["eval", str(run), "--task", str(mc), "--task", str(cloze), "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)["tasks"]
    assert main(["eval", str(run), "--harness", "nt_choice,nt_fill", "--include-path", str(yamls), "--json"]) == 0
    theirs = json.loads(capsys.readouterr().out)["results"]
    assert theirs["nt_choice"]["acc,none"] == ours["choice"]["acc"]
    assert theirs["nt_choice"]["acc_bytes,none"] == ours["choice"]["acc_norm"]  # per UTF-8 byte of the choice
    assert theirs["nt_fill"]["acc,none"] == ours["fill"]["acc"]  # every continuation token greedy
    assert 0 < ours["choice"]["acc"] < 1 or 0 < ours["fill"]["acc"] < 1  # not a degenerate comparison


def test_harness_limit_and_rolling_bits_per_byte(harness_setup, capsys):
    """loglikelihood_rolling: each text's tokens after an end-of-text token, in windows of block_size (the 3rd
    text is longer than one); its bits per byte equals the same sum scored window by window here."""
    run, _, _, yamls = harness_setup
    assert main(["eval", str(run), "--harness", "nt_rolling", "--include-path", str(yamls), "--limit", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"]["nt_rolling"]["effective"] == 2
    assert main(["eval", str(run), "--harness", "nt_rolling", "--include-path", str(yamls), "--json"]) == 0
    bpb = json.loads(capsys.readouterr().out)["results"]["nt_rolling"]["bits_per_byte,none"]
    loaded = Run(run).load()
    tok, T = loaded.tokenizer, loaded.model.cfg.block_size
    nll, n_bytes = 0.0, 0
    for line in (yamls.parent / "rolling.jsonl").read_text().splitlines():
        text = json.loads(line)["text"]
        ids = [eot_id(tok)] + tok.encode(text).ids
        pairs = [(ids[max(0, s - T):s], ids[s:s + T]) for s in range(1, len(ids), T)]  # disjoint windows
        nll -= sum(ll for ll, _ in loglikelihoods(loaded.model, pairs, T))
        n_bytes += len(text.encode())
    assert len(ids) > T + 1  # the last text spans two windows
    assert bpb == pytest.approx(nll / n_bytes / math.log(2), abs=1e-4)


def test_generate_until_is_greedy_and_stops(harness_setup):
    run, _, _, _ = harness_setup
    loaded = Run(run).load()
    lm = NextokenLM(loaded)
    prompt = "def alpha_beta(alpha, beta):\n"
    ids = [eot_id(loaded.tokenizer)] + loaded.tokenizer.encode(prompt).ids
    greedy = loaded.tokenizer.decode(list(generate(loaded.model, ids, 12, temperature=0)))
    req = [SimpleNamespace(args=(prompt, {"until": ["\n"], "max_gen_toks": 12}))]
    assert lm.generate_until(req) == [greedy.split("\n")[0]]
    req = [SimpleNamespace(args=(prompt, {"until": ["zzz"], "max_gen_toks": 12}))]
    assert lm.generate_until(req) == [greedy]


@pytest.mark.slow  # an unknown name makes lm-eval index its whole task library
def test_harness_refusals_are_one_line(harness_setup, capsys):
    run, _, _, yamls = harness_setup
    assert main(["eval", str(run), "--harness", "no_such_task", "--include-path", str(yamls)]) != 0
    err = capsys.readouterr().err.strip()
    assert "lm-eval knows no task no_such_task" in err and len(err.splitlines()) == 1
    assert main(["eval", str(run), "--harness", "nt_fill", "--task", "x.jsonl"]) != 0
    assert "not both" in capsys.readouterr().err


def test_lm_eval_hf_on_an_export_agrees_with_a_document_start_token(harness_setup, tmp_path, capsys):
    """What a user of `lm_eval --model hf` gets on `nextoken export`: the same scores with add_bos_token=True
    (the export's BOS is the end-of-text token nextoken trains every document after)."""
    pytest.importorskip("accelerate")
    import lm_eval
    from lm_eval.tasks import TaskManager

    run, mc, _, yamls = harness_setup
    assert main(["export", str(run), "--out", str(tmp_path / "hf"), "--no-check"]) == 0
    assert main(["eval", str(run), "--task", str(mc), "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)["tasks"]["choice"]
    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'hf'},add_bos_token=True",
                                  tasks=["nt_choice"], device="cpu", batch_size=8, bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(yamls), include_defaults=False))
    assert res["results"]["nt_choice"]["acc,none"] == ours["acc"]
    assert res["results"]["nt_choice"]["acc_bytes,none"] == ours["acc_norm"]
