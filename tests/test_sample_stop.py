"""`sample` ends at the end-of-text token (issue 23: it printed through <|endoftext|> into a new document), as
the exported model's generation_config does; --past-eot goes on."""

from __future__ import annotations

import pytest

from nextoken import generate as G
from nextoken.cli import build_parser
from nextoken.data.tokenizer import bytes_tokenizer, eot_id


@pytest.fixture
def scripted(monkeypatch):
    """`generate` yielding "ab", the separator, "cd"."""
    tok = bytes_tokenizer()
    ids = [ord("a"), ord("b"), eot_id(tok), ord("c"), ord("d")]
    monkeypatch.setattr(G, "generate", lambda model, prompt, n, **kw: iter(ids[:n]))
    return tok


def test_a_sample_stops_at_the_end_of_text_token(scripted):
    assert "".join(G.stream_text(scripted, None, "x", 5)) == "ab"


def test_a_sample_goes_past_it_when_asked(scripted):
    assert "".join(G.stream_text(scripted, None, "x", 5, stop_at_eot=False)) == "ab<|endoftext|>cd"


def test_the_cli_flag():
    args = build_parser().parse_args(["sample", "RUN"])
    assert args.past_eot is False
    assert build_parser().parse_args(["sample", "RUN", "--past-eot"]).past_eot is True
