"""The search page that `siglip serve` shows at /, in a real browser (headless Chromium + Selenium):
a text query shows the server's hits as loaded thumbnails in the server's order, an uploaded image
finds itself first, the classify panel draws the server's probabilities as bars, errors from the
server are shown with its message, and the API-key field makes a keyed server usable."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.serve_browser import SHAPES, chromium, serving, tiny_model_and_index

pytest.importorskip("fastapi", reason="siglip serve needs the serve extra: pip install 'siglip[serve]'")


@pytest.fixture(scope="module")
def site(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("page")
    model, index, images = tiny_model_and_index(root, tokenizer)
    with serving(["--model", str(model), "--index", f"shapes={index}"], root / "server.log") as base:
        yield base, model, index, images


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def by_css(driver, css: str):
    return driver.find_elements("css selector", css)


def open_page(driver, url: str) -> None:
    driver.get(url)
    driver.execute_script("localStorage.clear()")
    driver.get(url)
    wait(driver, lambda d: by_css(d, "#index option") or d.find_element("id", "error").is_displayed())


def shown_hits(driver) -> list[dict]:
    """The result cards as the page shows them: shown path, probability text, image loaded or not."""
    return driver.execute_script(
        """return [...document.querySelectorAll('#results .hit')].map(card => {
             const img = card.querySelector('img');
             return {where: card.querySelector('.where').textContent, score: card.querySelector('.score').textContent,
                     loaded: !!img && img.complete && img.naturalWidth > 0, src: img ? img.src : null};
           });"""
    )


def js_percent(p: float) -> str:
    """app.js's percent(): the same formatting, to compare the page with the API's numbers."""
    if p >= 0.001:
        return f"{100 * p:.{1 if p >= 0.1 else 2}f}%"
    mantissa, exp = f"{p:.1e}".split("e")
    return f"{mantissa}e{int(exp)}"


def all_loaded(d, n: int) -> bool:
    hits = shown_hits(d)
    return len(hits) == n and all(h["loaded"] for h in hits)


def test_text_query_shows_the_servers_hits_as_thumbnails(browser, site, tmp_path):
    base, _, _, images = site
    open_page(browser, base + "/")
    assert [o.text for o in by_css(browser, "#index option")] == ["shapes"]
    k = 6
    browser.find_element("id", "k").clear()
    browser.find_element("id", "k").send_keys(str(k))
    browser.find_element("id", "query").send_keys("a red circle\n")
    wait(browser, lambda d: all_loaded(d, k))
    hits = shown_hits(browser)
    want = httpx.post(base + "/v1/search", json={"index": "shapes", "text": "a red circle", "k": k}).json()["hits"]
    assert [h["where"] for h in hits] == [w["path"] for w in want]  # the server's order, the server's paths
    assert [h["score"] for h in hits] == [js_percent(w["score"]) for w in want]
    assert {re.sub(r"&exp=\d+", "", h["src"]) for h in hits} == {re.sub(r"&exp=\d+", "", w["thumbnail"]) for w in want}
    assert set(h["where"] for h in hits) <= {str(p) for p in images}
    assert "q=a+red+circle" in browser.current_url  # the search can be shared as a link
    browser.save_screenshot(str(tmp_path / "text-query.png"))
    assert (tmp_path / "text-query.png").stat().st_size > 10_000


def test_an_uploaded_image_finds_itself_first_and_classifies(browser, site, tmp_path):
    base, _, _, images = site
    open_page(browser, base + "/")
    query, other = images[0], images[len(SHAPES) + 1]  # red circle, and a blue square of another size
    browser.find_element("id", "image-input").send_keys(f"{query}\n{other}")
    wait(browser, lambda d: len(by_css(d, "#uploads img")) == 2 and all_loaded(d, 10))
    assert shown_hits(browser)[0]["where"] == str(other)  # the last upload is the query; cosine 1 with itself

    labels = ["red circle", "blue square", "green triangle"]
    browser.find_element("id", "labels").send_keys("\n".join(labels))
    browser.find_element("id", "templates").send_keys("a photo of a {}.")
    browser.find_element("id", "classify-btn").click()
    wait(browser, lambda d: len(by_css(d, ".classified")) == 2)
    shown = browser.execute_script(
        """return [...document.querySelectorAll('.classified')].map(b => [...b.querySelectorAll('.bar')].map(
             r => [r.querySelector('.label').textContent, r.querySelector('.value').textContent, r.classList.contains('top')]));"""
    )
    uris = [browser.execute_script(f"return document.querySelectorAll('#uploads img')[{i}].src") for i in (0, 1)]
    body = {"images": uris, "labels": labels, "templates": ["a photo of a {}."]}
    want = httpx.post(base + "/v1/classify", json=body).json()["results"]
    for bars, w in zip(shown, want):
        expect = sorted(zip(labels, w["probabilities"]), key=lambda lp: -lp[1])
        assert [(label, value) for label, value, _ in bars] == [(lab, js_percent(p)) for lab, p in expect]
        assert [label for label, _, top in bars if top] == [w["top"]]
    browser.save_screenshot(str(tmp_path / "classify.png"))
    assert (tmp_path / "classify.png").stat().st_size > 10_000


def test_server_errors_are_shown_with_their_message(browser, site):
    base = site[0]
    open_page(browser, base + "/")
    error = browser.find_element("id", "error")
    assert not error.is_displayed()
    browser.execute_script(
        "const s = document.getElementById('index'); s.add(new Option('nope', 'nope')); s.value = 'nope';"
    )
    browser.find_element("id", "query").send_keys("anything\n")
    wait(browser, lambda d: error.is_displayed())
    answer = httpx.post(base + "/v1/search", json={"index": "nope", "text": "anything", "k": 24})
    assert answer.status_code in (400, 404, 422)
    assert error.text == f"{answer.status_code}: {answer.json()['error']['message']}"
    assert not shown_hits(browser)


@pytest.mark.slow  # a second server start (~25 s on a busy 2-core machine)
def test_the_api_key_field_opens_a_keyed_server(browser, site, tmp_path):
    _, model, index, _ = site
    args = ["--model", str(model), "--index", f"shapes={index}", "--api-key", "s3cret"]
    with serving(args, tmp_path / "keyed.log") as base:
        open_page(browser, base + "/")
        error = browser.find_element("id", "error")
        assert error.is_displayed() and "API key" in error.text and error.text.startswith("401")
        key = browser.find_element("id", "api-key")
        key.send_keys("s3cret")
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
        wait(browser, lambda d: by_css(d, "#index option"))
        assert browser.execute_script("return localStorage.getItem('siglip.apiKey')") == "s3cret"
        browser.find_element("id", "query").send_keys("a green triangle\n")
        wait(browser, lambda d: all_loaded(d, 10))  # the signed thumbnail URLs load without the header
        assert not error.is_displayed()
