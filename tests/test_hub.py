"""Hub ids wherever a model path is taken (`siglip.interop.hub`): a real Hugging Face cache, laid out
by huggingface_hub itself while it downloads from a loopback stand-in for the Hub (tests/hub_server.py),
then loaded by id in a fresh process (huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE
when imported, as it does for a user). By id == by path for every layout; only the files the format
needs are fetched; `@revision` picks its snapshot; offline, the cache alone answers, and a miss is
a named error with exit code 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import siglip
from siglip.checkpoint import model_payload
from siglip.cli import main as cli_main
from siglip.config import ModelConfig, TrainConfig
from siglip.interop import load_payload, to_hf
from siglip.interop.hub import HubError, needed_files, parse_hub_id, resolve_model, tokenizer_files
from siglip.interop.open_clip import open_clip_rules
from siglip.interop.rules import unapply_rules
from siglip.model import SigLIP
from siglip.tokenizer import Tokenizer
from siglip.train.build import starting_payload
from tests.conftest import CAPTIONS, REPO, write_image
from tests.hub_server import FakeHub
from tests.siglip2_helpers import gemma_proto

pytest.importorskip("huggingface_hub")

TEXTS = ["a red square on white", "a photo of a cat"]
JUNK = os.urandom(1 << 20)  # 1 MiB that no format needs: must never be fetched
EMBED = """
import json, sys, siglip
out = {}
for ref in sys.argv[3:]:
    model, _, tok = ref.partition("::")  # MODEL::TOKENIZER
    try:
        m = siglip.load(model, tokenizer=tok or None)
    except FileNotFoundError as e:
        out[ref] = str(e)
        continue
    out[ref] = [m.fingerprint, m.embed_texts(json.loads(sys.argv[2])).tolist(), m.embed_images([sys.argv[1]]).tolist()]
print("RESULT " + json.dumps(out))
"""


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def tiny(seed: int, **kw) -> SigLIP:
    torch.manual_seed(seed)
    cfg = ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=kw.pop("vocab_size", 64), **kw)
    model = SigLIP(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return model


def open_clip_files(model: SigLIP, tok: Tokenizer, tmp: Path) -> dict[str, bytes]:
    """open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors + the tokenizer),
    written from our weights with the same key rules the reader uses."""

    def shape(rule, t):
        return tuple(t.shape[1:]) if rule.theirs == "text.positional_embedding" else None  # stored (L, D)

    state = unapply_rules(open_clip_rules(model.config), model.state_dict(), shape)
    save_file(state, tmp / "oc.safetensors")
    cfg = {"model_cfg": {"text_cfg": {"heads": model.config.text.heads}}, "preprocess_cfg": {}}
    return {
        "open_clip_model.safetensors": (tmp / "oc.safetensors").read_bytes(),
        "open_clip_config.json": json.dumps(cfg).encode(),
        "spiece.model": tok.proto,
    }


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """Local folders of five tiny models and a FakeHub holding them as repos (not started)."""
    tmp = tmp_path_factory.mktemp("hub")
    tok = Tokenizer.train(CAPTIONS * 4, vocab_size=64, length=8)
    local, hub = {}, FakeHub()
    for name, seed in (("a", 0), ("b", 1)):  # Hugging Face layout, two revisions
        to_hf(model_payload(tiny(seed), tok, "bicubic"), tmp / f"hf_{name}")
        local[f"hf_{name}"] = tmp / f"hf_{name}"
    gemma = Tokenizer(gemma_proto(), 8, kind="gemma")  # SigLIP 2 (NaFlex, Gemma tokenizer): Siglip2Model folder
    to_hf(model_payload(tiny(2, vocab_size=330, naflex=True), gemma, "bilinear"), tmp / "hf2")
    local["hf2"] = tmp / "hf2"
    (tmp / "oc").mkdir()
    for n, b in open_clip_files(tiny(3), tok, tmp).items():
        (tmp / "oc" / n).write_bytes(b)
    local["oc"] = tmp / "oc" / "open_clip_model.safetensors"
    siglip.save_model(tmp / "ours" / "siglip_tiny.pt", tiny(4), tok)
    local["ours"] = tmp / "ours" / "siglip_tiny.pt"
    junk = {"flax_model.msgpack": JUNK, "pytorch_model.bin": JUNK, "README.md": b"# tiny\n"}
    hub.add("google/siglip-tiny", {**files_of(local["hf_b"]), **junk}, refs=("v1",))
    hub.add("google/siglip-tiny", {**files_of(local["hf_a"]), **junk}, refs=("main",))
    hub.add("google/siglip2-tiny", {**files_of(local["hf2"]), "README.md": b"x"})
    # as timm's repos: open_clip files beside timm's own config.json + model.safetensors (not ours to read)
    timm = {"config.json": b'{"architecture": "vit_base_patch16_siglip_224"}', "model.safetensors": JUNK}
    hub.add("timm/ViT-tiny-SigLIP", {**files_of(tmp / "oc"), **timm})
    hub.add("me/siglip-ours", {**files_of(tmp / "ours"), "notes.txt": JUNK})
    # tokenizers kept apart from the weights: a repo read for its tokenizer alone (its weights never
    # fetched), weights folders without one, and an open_clip repo whose config names another repo's
    hub.add("google/siglip-tok", {**files_of(local["hf_a"]), "model.safetensors": JUNK})
    for name in ("hf_a", "hf2"):
        (tmp / f"{name}_notok").mkdir()
        for n, b in files_of(local[name]).items():
            if n in ("config.json", "model.safetensors", "preprocessor_config.json"):
                (tmp / f"{name}_notok" / n).write_bytes(b)
        local[f"{name}_notok"] = tmp / f"{name}_notok"
    oc_cfg = json.loads(files_of(tmp / "oc")["open_clip_config.json"])
    oc_cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "timm/ViT-tiny-SigLIP"  # as open_clip pushes by default
    oc_weights = files_of(tmp / "oc")["open_clip_model.safetensors"]
    hub.add(
        "me/oc-elsewhere",
        {"open_clip_model.safetensors": oc_weights, "open_clip_config.json": json.dumps(oc_cfg).encode()},
    )
    return local, hub, write_image(tmp / "images" / "red.png", size=(24, 18))


def run_embed(env: dict, image: Path, refs: list[str], cwd: Path) -> tuple[int, dict, str]:
    cmd = [sys.executable, "-c", EMBED, str(image), json.dumps(TEXTS), *refs]
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    return p.returncode, json.loads(line[0][7:]) if line else {}, p.stderr


def hub_env(home: Path, endpoint: str, offline: bool) -> dict:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_")) and "proxy" not in k.lower()
    }
    env.update(HF_HOME=str(home), HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="1" if offline else "0", PYTHONPATH=str(REPO))
    env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_UPDATE_CHECK="1", NO_PROXY="127.0.0.1,localhost")
    return env


def expected(path: Path, image: Path) -> list:
    m = siglip.load(path)
    return [m.fingerprint, m.embed_texts(TEXTS).tolist(), m.embed_images([image]).tolist()]


def assert_same(got: list, want: list, ref: str) -> None:
    assert got[0] == want[0], f"{ref}: other weights"
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(torch.tensor(g), torch.tensor(w), atol=1e-6, rtol=0, msg=ref)


def test_ids_load_as_their_folders_and_fetch_only_what_the_format_needs(repos, tmp_path, monkeypatch):
    """Online (the stand-in running): every layout by id == by path; then with HF_HUB_OFFLINE=1 and
    the server gone, the cache alone gives the same. The junk files were never requested. Then every
    other entry point, on that cache."""
    local, hub, image = repos
    commit_b = hub.refs["google/siglip-tiny"]["v1"]
    cases = {
        "google/siglip-tiny": local["hf_a"],
        "google/siglip-tiny@v1": local["hf_b"],  # a tag
        f"google/siglip-tiny@{commit_b}": local["hf_b"],  # a commit
        "google/siglip2-tiny": local["hf2"],
        "hf-hub:timm/ViT-tiny-SigLIP": local["oc"],
        "me/siglip-ours": local["ours"],
    }
    want = {ref: expected(path, image) for ref, path in cases.items()}
    assert want["google/siglip-tiny"][0] != want["google/siglip-tiny@v1"][0]
    wrong = ["google/no-such-model", "google/siglip-tiny@v9"]
    url = hub.start().url
    try:
        rc, got, err = run_embed(hub_env(tmp_path / "hf", url, offline=False), image, [*cases, *wrong], tmp_path)
    finally:
        hub.stop()
    assert rc == 0, err
    for ref in cases:
        assert_same(got[ref], want[ref], ref)
    assert got[wrong[0]].startswith("google/no-such-model: no such model on the Hub"), got[wrong[0]]
    assert got[wrong[1]] == "google/siglip-tiny@v9: the repo has no revision 'v9' (a branch, tag or commit)"
    gets = [p for m, p in hub.requests if m == "GET" and "/resolve/" in p]
    assert not [p for p in gets if p.endswith(("flax_model.msgpack", "pytorch_model.bin", "README.md", "notes.txt"))]
    assert not [p for p in gets if p.startswith("/timm/") and p.endswith(("/model.safetensors", "/config.json"))]
    assert not [p for p in gets if p.startswith("/google/siglip2-tiny/") and p.endswith("tokenizer.json")]
    cache = tmp_path / "hf" / "hub"
    assert (cache / "models--google--siglip-tiny" / "refs" / "v1").read_text() == commit_b  # the client's layout
    # offline, no server: the same answers from the cache alone
    rc, again, err = run_embed(hub_env(tmp_path / "hf", url, offline=True), image, list(cases), tmp_path)
    assert rc == 0, err
    for ref in cases:
        assert_same(again[ref], want[ref], ref)
    check_entry_points(cache, local, image, monkeypatch, tmp_path)


def check_entry_points(cache: Path, local: dict, image: Path, monkeypatch, tmp_path: Path) -> None:
    """Training's --pretrained-path, `siglip convert`, and an index made by id (its meta.json keeps the
    id, so `siglip search` without --model finds the model again), here in-process on the cache above."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    payload = starting_payload(TrainConfig(pretrained_path="google/siglip-tiny@v1"), False, tmp_path / "x.pt")
    want = load_payload(local["hf_b"])["state_dict"]
    assert all(torch.equal(payload["state_dict"][k], v) for k, v in want.items())
    assert cli_main(["convert", "hf-hub:timm/ViT-tiny-SigLIP", "oc.pt", "--to", "siglip"]) == 0
    assert siglip.load("oc.pt").fingerprint == siglip.load(local["oc"]).fingerprint
    args = ["embed", str(image.parent), "--model", "me/siglip-ours", "--out", "red.index", "--device", "cpu"]
    assert cli_main(args) == 0
    assert json.loads(Path("red.index/meta.json").read_text())["model"] == "me/siglip-ours"
    assert cli_main(["search", "red.index", "a red square", "-k", "1", "--json"]) == 0


def test_offline_miss_is_a_named_error_exit_1(repos, tmp_path, monkeypatch, capsys):
    """Not cached and HF_HUB_OFFLINE=1: the CLI says which id and how to fetch it, exit code 1, no
    traceback (before: `checkpoint not found: org/name`). In a fresh process as a user runs it, and
    for `siglip convert` in this one (the client's constants pointed at an empty cache)."""
    _, _, image = repos
    env = hub_env(tmp_path / "hf", "http://127.0.0.1:9", offline=True)
    cmd = [sys.executable, "-m", "siglip", "embed", str(image.parent), "--model", "google/siglip-tiny@v1"]
    p = subprocess.run([*cmd, "--out", str(tmp_path / "x.index")], env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 1, p.stderr
    assert "google/siglip-tiny@v1" in p.stderr and "hf download google/siglip-tiny --revision v1" in p.stderr
    assert "Traceback" not in p.stderr
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert cli_main(["convert", "hf-hub:timm/ViT-tiny-SigLIP", str(tmp_path / "m.pt"), "--to", "siglip"]) == 1
    err = capsys.readouterr().err
    assert "siglip convert: error: hf-hub:timm/ViT-tiny-SigLIP: not a local path" in err
    assert "hf download timm/ViT-tiny-SigLIP" in err and "offline mode is on" in err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online, but nothing answers: named too
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubError, match=r"google/siglip-tiny: .* not in the cache \(the Hub could not be reached"):
        siglip.load("google/siglip-tiny")


def test_a_local_path_wins_over_an_id_of_the_same_spelling(repos, tmp_path, monkeypatch):
    local, _, image = repos
    folder = tmp_path / "google" / "siglip-tiny"
    folder.mkdir(parents=True)
    for n, b in files_of(local["hf_b"]).items():
        (folder / n).write_bytes(b)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("google/siglip-tiny") == Path("google/siglip-tiny")  # no Hub, no cache looked at
    assert siglip.load("google/siglip-tiny").fingerprint == siglip.load(local["hf_b"]).fingerprint


def test_tokenizer_by_id_and_the_repo_open_clip_names(repos, tmp_path, monkeypatch):
    """`tokenizer=` / --tokenizer by Hub id fetches that repo's tokenizer files alone (never its
    weights), and gives the embeddings of the model with its own tokenizer beside it; SigLIP 2's Gemma
    kind is told from the tokenizer repo's config. An open_clip repo pushed without tokenizer files
    takes the one its config's text_cfg.hf_tokenizer_name names, as open_clip does. Online, then
    offline from the cache alone; an id not cached offline is a named error, exit 1; training's
    tokenizer.path takes an id too."""
    local, hub, image = repos
    cases = {
        f"{local['hf_a_notok']}::google/siglip-tok": local["hf_a"],
        f"{local['hf2_notok']}::google/siglip2-tiny": local["hf2"],
        "me/oc-elsewhere": local["oc"],
    }
    want = {ref: expected(path, image) for ref, path in cases.items()}
    before = len(hub.requests)  # the module's stand-in Hub: earlier tests' requests are kept
    url = hub.start().url
    try:
        rc, got, err = run_embed(hub_env(tmp_path / "hf", url, offline=False), image, list(cases), tmp_path)
    finally:
        hub.stop()
    assert rc == 0, err
    for ref in cases:
        assert_same(got[ref], want[ref], ref)
    gets = [p for m, p in hub.requests[before:] if m == "GET" and "/resolve/" in p]
    assert not [
        p for p in gets if p.startswith("/google/siglip-tok/") and p.endswith(("/model.safetensors", "/config.json"))
    ]
    assert not [p for p in gets if p.startswith("/timm/ViT-tiny-SigLIP/") and "open_clip" in p]  # its tokenizer alone
    rc, again, err = run_embed(hub_env(tmp_path / "hf", url, offline=True), image, list(cases), tmp_path)
    assert rc == 0, err
    for ref in cases:
        assert_same(again[ref], want[ref], ref)
    env = hub_env(tmp_path / "hf", url, offline=True)
    cmd = [sys.executable, "-m", "siglip", "embed", str(image.parent), "--model", str(local["hf_a_notok"])]
    cmd += ["--tokenizer", "google/other-tok", "--out", str(tmp_path / "x.index")]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "google/other-tok: not a local path" in p.stderr and "hf download google/other-tok" in p.stderr
    from huggingface_hub import constants

    from siglip.config import Config
    from siglip.distributed import Runtime
    from siglip.train.build import build_tokenizer

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = Config()
    cfg.tokenizer.path, cfg.model.text_length = "google/siglip2-tiny", 8
    tok = build_tokenizer(cfg, None, None, Runtime())
    assert tok.kind == "gemma" and tok.proto == (local["hf2"] / "tokenizer.model").read_bytes()


def test_spellings_and_file_choice():
    assert parse_hub_id("google/siglip-base-patch16-224") == ("google/siglip-base-patch16-224", None)
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hub_id("hf-hub:timm/ViT-B-16-SigLIP") == ("timm/ViT-B-16-SigLIP", None)
    assert parse_hub_id("org/name@refs/pr/3") == ("org/name", "refs/pr/3")
    for path in ("runs/m.pt", "./org/name", "/abs/x", "a/b/c", "m.pt", "~/x", "org/name@", "org/../x"):
        assert parse_hub_id(path) is None, path
    listing = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.model", "tokenizer.json"]
    choice = needed_files([*listing, "tokenizer_config.json", "flax_model.msgpack", "onnx/model.onnx"], "x")
    assert choice.files == ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json")
    assert needed_files(["config.json", "model.safetensors", "tokenizer.json"], "x").files[-1] == "tokenizer.json"
    oc = needed_files(["open_clip_pytorch_model.bin", "config.json", "model.safetensors"], "x")
    assert oc.files == ("open_clip_pytorch_model.bin",) and not oc.has_tokenizer
    shards = ["model.safetensors.index.json", "model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"]
    split = needed_files(["config.json", *shards, "pytorch_model-00001-of-00002.bin", "spiece.model"], "x")
    assert split.files == ("config.json", shards[0], shards[2], shards[1], "spiece.model")  # the index, then shards
    with pytest.raises(HubError, match="2 model files of ours"):
        needed_files(["a.pt", "b.pt"], "x")
    with pytest.raises(HubError, match="no model files siglip reads"):
        needed_files(["README.md"], "x")
    tok = tokenizer_files(
        ["model.safetensors", "config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json"], "x"
    )
    assert tok.files == ("spiece.model", "tokenizer_config.json") and tok.has_tokenizer
    assert tokenizer_files(["tokenizer.json", "special_tokens_map.json"], "x").files[0] == "tokenizer.json"
    with pytest.raises(HubError, match="x: no tokenizer files in this repo"):
        tokenizer_files(["model.safetensors", "tokenizer_config.json"], "x")


def test_without_the_extra_the_error_names_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'siglip\[hub\]'"):
        load_payload("google/siglip-base-patch16-224")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):  # a missing file stays a missing file
        load_payload("runs/missing.pt")
