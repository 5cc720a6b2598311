"""`nextoken serve` in a real browser: Debian's Chromium, headless, driven by Playwright (the system browser,
not Playwright's own download). It opens the runs page of a tiny run trained here, sees its curves drawn,
opens the next-token page, types a prompt, drags the temperature slider and sees the bars change, and checks
that no request left the server's origin. Screenshots go to $NEXTOKEN_SCREENSHOTS (default: the test's tmp).

Skipped where Chromium or Playwright is missing, except under .ci/run (NEXTOKEN_REQUIRE_BROWSER=1), which
installs both."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import tiny_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def _chromium_page(server: str):
    """A page of headless Chromium (the system browser), 1360 x 900, for a block of a test; after the block, no
    page raised a JavaScript error and no request left the server's origin (data: URLs aside)."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(60_000)  # a busy 2-core machine
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page
            assert not errors, errors
        finally:
            browser.close()
    off = [u for u in requests if not u.startswith(server) and not u.startswith("data:")]
    assert requests and not off, off


def _need_browser():
    required = os.environ.get("NEXTOKEN_REQUIRE_BROWSER") == "1"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if required:
            raise
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if CHROMIUM is None:
        if required:
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, bytes_data):
    _need_browser()
    from nextoken.api import train
    from nextoken.serve import make_server

    root = tmp_path_factory.mktemp("browser") / "runs"
    task = root.parent / "pick.jsonl"  # a task scored at each eval: its curves sit beside the loss
    task.write_text('{"context": "def f(x):", "choices": ["\\n    return x", " 1 +"], "label": 0}\n')
    train(tiny_config(bytes_data, train__max_steps=40, stability__inject="lr@25x100", train__eval_tasks=str(task)),
          root / "tiny", quiet=True)
    train(tiny_config(bytes_data, train__max_steps=40, train__label_smoothing=0.3), root / "smoothed", quiet=True)
    other = shutil.copytree(bytes_data, root.parent / "other")  # a second source, of the same tokenizer
    mixed = tiny_config(bytes_data, train__max_steps=20)
    mixed.data.mix = f"{bytes_data}=0.7,{other}=0.3"
    train(mixed, root / "mixed", quiet=True)
    srv, sock, url = make_server([root], "127.0.0.1", 0)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield url
    srv.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("NEXTOKEN_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_runs_curves_and_next_token_in_chromium(server, shots, tmp_path):
    from playwright.sync_api import expect

    with _chromium_page(server) as page:

        # the runs page lists the run; its page draws the curves
        page.goto(server + "/")
        page.locator('tr[data-run="runs/tiny"]').wait_for()
        assert "finished" in page.locator('tr[data-run="runs/tiny"]').inner_text()
        page.screenshot(path=str(shots / "serve-runs.png"))
        page.click('tr[data-run="runs/tiny"] a')
        page.wait_for_url("**/run?run=runs%2Ftiny")
        loss = page.locator('[data-chart="train_loss"] path.series').first
        loss.wait_for()
        assert len(loss.get_attribute("d")) > 100  # 40 steps drawn
        assert page.locator('[data-chart="train_loss"] .event-dot').count() >= 1  # checkpoints, incidents
        expect(page.locator('[data-chart="task/pick/acc"]')).to_contain_text("task pick: accuracy")
        assert page.locator('[data-chart="task/pick/acc"] path.series').count() == 2  # acc, acc_norm
        page.locator('[data-chart="task/pick/bpb"] path.series').wait_for()
        page.click('#xaxis button[data-v="tokens"]')
        expect(page.locator('#xaxis button[data-v="tokens"]')).to_have_class("on")
        expect(page.locator('[data-chart="train_loss"] .axis text').last).to_have_text("tokens")
        page.screenshot(path=str(shots / "serve-run.png"), full_page=True)

        # next token: type a prompt, drag the temperature, mark the true token
        page.goto(server + "/next?run=runs%2Ftiny")
        page.locator("#prompt").fill("for alpha in be")
        expect(page.locator("#prompt-tokens")).to_contain_text("for\u2423alpha\u2423in\u2423be")  # ␣: a space
        page.locator("#bars .bar[data-id]").first.wait_for()
        page.locator("#target").fill("t")
        page.locator("#bars .bar.truth").wait_for()
        expect(page.locator("#target-scored")).to_contain_text("as 1 token")  # says exactly what was scored
        expect(page.locator("#trained-on")).to_contain_text("trained on: corpus")
        expect(page.locator("header .brand")).to_have_text("nextoken")
        before = page.locator("#bars .bar[data-id] .p").all_inner_texts()
        entropy_before = page.locator("#entropy b").inner_text()
        loss_before = page.locator("#loss b").inner_text()
        box = page.locator("#temp").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.73, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.30, box["y"] + box["height"] / 2, steps=8)
        page.mouse.up()
        assert float(page.locator("#temp-value").inner_text()) < 0.8
        after = page.locator("#bars .bar[data-id] .p").all_inner_texts()
        assert after != before and float(after[0]) > float(before[0])  # colder: the top token gains
        assert page.locator("#entropy b").inner_text() != entropy_before
        assert page.locator("#loss b").inner_text() == loss_before  # the loss at T = 1 stays put
        page.screenshot(path=str(shots / "serve-next.png"), full_page=True)


def test_inspect_page_slider_heads_and_lens(server, shots):
    """The inside-the-model page: tokens, attention grid, logit lens; the checkpoint slider moves through
    training, a head enlarges on click, hovering a query names where it attends. Its screenshot is the
    README's (NEXTOKEN_SCREENSHOTS=docs/img)."""
    from playwright.sync_api import expect

    with _chromium_page(server) as page:

        page.goto(server + "/inspect?run=runs%2Ftiny")
        expect(page.locator("#trained-on")).to_contain_text("trained on")
        page.locator("#prompt").fill("for alpha in beta:")
        page.locator("#target").fill(" r")
        expect(page.locator("#ins-tokens .tok-id")).to_have_count(18)  # bytes: one token per character
        expect(page.locator("#inspect")).to_have_attribute("data-step", "40")
        assert page.locator("#att-grid canvas.att-mini").count() == 4  # 2 layers x 2 heads
        assert page.locator("#lens tr").count() == 3 + 1  # header, the embedding, 2 layers
        lens_last = page.locator("#lens").inner_text()
        # the slider to its first checkpoint: the whole page shows step 10
        slider = page.locator("#ckpt")
        slider.focus()
        page.keyboard.press("Home")
        expect(page.locator("#ckpt-step")).not_to_have_text("step 40")
        first = page.locator("#ckpt-step").inner_text().split()[1]  # the run keeps its last checkpoints
        expect(page.locator("#inspect")).to_have_attribute("data-step", first)
        assert page.locator("#lens").inner_text() != lens_last  # the lens earlier in training is another
        page.keyboard.press("End")
        expect(page.locator("#inspect")).to_have_attribute("data-step", "40")
        # a head, enlarged; hovering a query row names where it attends
        page.click('#att-grid canvas[data-layer="1"][data-head="1"]')
        expect(page.locator("#att-label")).to_contain_text("layer 2, head 2")
        expect(page.locator("#att-label")).to_contain_text("causal mask")
        box = page.locator("#att-big").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.9)
        expect(page.locator("#att-query")).to_contain_text("attends to")
        expect(page.locator("#ins-target")).to_contain_text("cross-entropy")
        expect(page.locator("#stage-7")).to_contain_text("perplexity e^loss")
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.9)
        page.set_viewport_size({"width": 1360, "height": 2400})  # all at once: no sticky header mid-page
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(shots / "serve-inspect.png"), clip={"x": 0, "y": 0, "width": 1360, "height": 1720})


def test_surprise_sample_and_compare_pages(server, shots):
    from playwright.sync_api import expect

    with _chromium_page(server) as page:

        page.goto(server + "/surprise?run=runs%2Ftiny")
        page.locator(".text-surprise span[data-loss]").first.wait_for()
        assert float(page.locator("#s-bpb b").inner_text()) > 0
        pasted = page.locator("#s-n b").inner_text()
        page.locator("#doc option").nth(1).wait_for(state="attached")
        page.select_option("#doc", index=1)
        expect(page.locator("#s-n b")).not_to_have_text(pasted)  # the val document replaced the pasted text
        doc_n = page.locator("#s-n b").inner_text()
        page.locator("#text").fill("x = 1\n")  # your own text after a document: Score scores it
        page.click("#score")
        expect(page.locator("#s-n b")).to_have_text("6 / 6")
        assert doc_n != "6 / 6"
        expect(page.locator("#s-ppl")).to_contain_text("e^loss")
        assert "p 0.000" not in page.locator(".text-surprise").evaluate("e => e.innerHTML")
        page.locator(".text-surprise span[data-loss]").nth(2).hover()
        expect(page.locator("#tip")).to_contain_text("expected")
        page.screenshot(path=str(shots / "serve-surprise.png"), full_page=True)

        page.goto(server + "/sample?run=runs%2Ftiny")
        page.fill("#seed", "7")
        page.fill("#ntok", "60")
        page.click("#generate")
        expect(page.locator("#sample-meta")).to_contain_text("pieces")
        assert len(page.locator("#sample-out").inner_text()) >= 60

        page.goto(server + "/compare?run=runs%2Fsmoothed&run=runs%2Ftiny")
        page.locator('[data-chart="train_loss"] path.series').nth(1).wait_for()
        expect(page.locator("#diff")).to_contain_text("train.label_smoothing")
        assert page.locator('[data-chart="task/pick/acc"] path.series').count() == 1  # only runs/tiny scored it
        page.screenshot(path=str(shots / "serve-compare.png"), full_page=True)

        # a mixed run: its page draws a val curve per source; Compare overlays a source across runs
        page.goto(server + "/run?run=runs%2Fmixed")
        by_source = page.locator('[data-chart="val_loss_by_source"] path.series')
        by_source.nth(2).wait_for()  # the mix's, then one per source
        page.goto(server + "/compare?run=runs%2Fmixed&run=runs%2Ftiny")
        page.locator('[data-chart="val_loss:other"] path.series').first.wait_for()
