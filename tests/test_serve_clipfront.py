"""clip-retrieval's own search page (clip-front, the built page inside the clip-retrieval wheel under
front/build) pointed at `siglip serve`: served from another loopback port with its config.json naming
us, opened in headless Chromium with ?back=...&index=...&query=..., it shows our hits: the <img>s
are our thumbnail URLs, loaded across origins, and its cross-origin fetches need `--cors`."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from tests.serve_browser import chromium, require_chromium, serving, static_folder, tiny_model_and_index

pytest.importorskip("fastapi", reason="siglip serve needs the serve extra: pip install 'siglip[serve]'")

# every <img> in the page, through clip-front's (nested) shadow roots: [src, loaded]
IMAGES_JS = """
const out = [];
const walk = (root) => root.querySelectorAll('*').forEach(el => {
  if (el.tagName === 'IMG') out.push([el.src, el.complete && el.naturalWidth > 0]);
  if (el.shadowRoot) walk(el.shadowRoot);
});
walk(document);
return out;
"""


def clip_front_build() -> Path:
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None or spec.origin is None:
        pytest.skip("clip-retrieval is not installed (make test installs it with --no-deps)")
    build = Path(spec.origin).parents[1] / "front" / "build"  # the wheel puts front/ beside clip_retrieval/
    if not (build / "index.html").is_file():
        pytest.skip(f"no clip-front build at {build}")
    return build


def copy_clip_front(tmp_path: Path, back: str) -> Path:
    """clip-front copied to tmp_path/front with a config.json naming `back` (and our index)."""
    front = tmp_path / "front"
    shutil.copytree(clip_front_build(), front, dirs_exist_ok=True)
    (front / "config.json").write_text(json.dumps({"defaultBackend": back, "defaultIndex": "shapes"}))
    return front


@pytest.fixture(scope="module")
def served_front(tmp_path_factory, tokenizer):
    require_chromium()
    clip_front_build()
    tmp_path = tmp_path_factory.mktemp("clipfront")
    model, index, images = tiny_model_and_index(tmp_path, tokenizer)
    front = copy_clip_front(tmp_path, "")
    with static_folder(front, tmp_path / "front.log") as origin:
        yield tmp_path, model, index, images, origin


def no_exp(url: str) -> str:
    """A thumbnail URL without its expiry time (two searches a minute apart hand out different ones)."""
    return re.sub(r"&exp=\d+", "", url)


def page_images(driver, want: set[str], timeout: float = 60.0) -> list[list]:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        shown = d.execute_script(IMAGES_JS)
        return shown if {no_exp(u) for u in want} <= {no_exp(src) for src, ok in shown if ok} else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(ready)
    except TimeoutException:
        return driver.execute_script(IMAGES_JS)


def test_clip_front_shows_our_results(served_front):
    tmp_path, model, index, images, origin = served_front
    args = ["--model", str(model), "--index", f"shapes={index}", "--cors", origin]
    with serving(args, tmp_path / "cors.log") as back:
        copy_clip_front(tmp_path, back)
        body = {"text": "a red circle", "modality": "image", "num_images": 40, "indice_name": "shapes"}
        ours = httpx.post(back + "/knn-service", content=json.dumps(body)).json()  # as clip-front posts: text/plain
        want = {hit["url"] for hit in ours}
        assert len(want) == len(images) and all(u.startswith(back + "/") for u in want)

        driver = chromium()
        try:
            driver.get(f"{origin}/?{urlencode({'back': back, 'index': 'shapes', 'query': 'a red circle'})}")
            shown = page_images(driver, want)
            driver.save_screenshot(str(tmp_path / "clip-front.png"))  # what it showed, to look at
        finally:
            driver.quit()
        loaded = {no_exp(src) for src, ok in shown if ok}  # its own search's URLs may expire a minute later
        want = {no_exp(u) for u in want}
        assert want <= loaded, f"clip-front showed {sorted(loaded)}, our hits are {sorted(want)}"


@pytest.mark.slow  # a second server start and a wait for nothing (~40 s on a busy 2-core machine)
def test_without_cors_clip_front_cannot_call_us(served_front):
    tmp_path, model, index, _, origin = served_front
    with serving(["--model", str(model), "--index", f"shapes={index}"], tmp_path / "no-cors.log") as back:
        copy_clip_front(tmp_path, back)
        body = {"text": "a red circle", "modality": "image", "num_images": 40, "indice_name": "shapes"}
        want = {hit["url"] for hit in httpx.post(back + "/knn-service", content=json.dumps(body)).json()}
        driver = chromium()
        try:
            driver.get(f"{origin}/?{urlencode({'back': back, 'index': 'shapes', 'query': 'a red circle'})}")
            shown = page_images(driver, want, timeout=8)
        finally:
            driver.quit()
        assert not {no_exp(u) for u in want} & {
            no_exp(src) for src, _ in shown
        }  # the browser refused the cross-origin answers
