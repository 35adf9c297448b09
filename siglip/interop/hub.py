"""A model reference becomes a local path here, once, before any format reader runs.

An existing path is returned as it is (it always wins over an id of the same spelling). Otherwise a
Hugging Face Hub id, `org/name`, `org/name@revision` (a branch, tag or commit) or open_clip's
`hf-hub:org/name`, is resolved through `huggingface_hub` (the `hub` extra): the local cache first
(what transformers, open_clip or `hf download` already fetched; no network at all when the files are
there), else a download, with progress, of only the files the repo's format needs (`needed_files`).
The token for gated or private repos is wherever huggingface_hub looks for it (`hf auth login`,
HF_TOKEN); nothing is passed from here. A failure is one `HubError` naming the id, never a traceback
from inside the client.

A tokenizer reference (`--tokenizer`) resolves the same way (`resolve_tokenizer`), fetching only the
repo's tokenizer files; open_clip's `text_cfg.hf_tokenizer_name` (`tokenizer_repo`) is such a
reference when a model repo keeps its tokenizer in another repo.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("siglip.hub")

HUB_PREFIX = "hf-hub:"  # open_clip's spelling
_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w.-][\w./-]*))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# `runs/m.pt` that does not exist is a missing file, not a repo called m.pt (an hf-hub: prefix still says "id")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt", ".model", ".json")

OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's own order
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")  # transformers' split checkpoints
SAFETENSORS_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")
BIN_SHARD = re.compile(r"pytorch_model-\d+-of-\d+\.bin")
NAMED_TOKENIZERS = ("spiece.model", "tokenizer.model")
SMALL_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")


class HubError(FileNotFoundError):
    """A Hub id that could not become a local folder: not cached while offline, no such repo or
    revision, no access, no network, or no file this toolkit reads. The message says which and what to do."""


@dataclass(frozen=True)
class Choice:
    """What to fetch from a repo and what to hand the readers: `target` is the folder ('') or the
    one file that pins the format (a snapshot may also hold other libraries' files)."""

    files: tuple[str, ...]
    target: str
    has_tokenizer: bool


Chooser = Callable[[Iterable[str], str], Choice]  # (a repo's file names, the id as spelled) -> what to fetch


def parse_hub_id(ref: str) -> tuple[str, str | None] | None:
    """`org/name`, `org/name@revision` or `hf-hub:org/name[@revision]` -> (repo id, revision or None);
    None for anything not spelled as an id (more or fewer path parts, ./ or ~, a checkpoint file's suffix)."""
    prefixed = ref.startswith(HUB_PREFIX)
    m = _ID.fullmatch(ref[len(HUB_PREFIX) :] if prefixed else ref)
    if m is None or ".." in m["repo"] or m["repo"].endswith((".", "-")):
        return None
    if not prefixed and m["repo"].lower().endswith(_FILE_SUFFIXES):
        return None
    return m["repo"], m["rev"]


def model_ref_exists(ref: str) -> bool:
    """An existing path, or a Hub id (which `resolve_model` looks up): what an index's meta.json may name."""
    return Path(ref).expanduser().exists() or parse_hub_id(ref) is not None


def stored_ref(ref: str) -> str:
    """How a model is recorded (an index's meta.json): an existing path made absolute, a Hub id as spelled."""
    return os.path.abspath(ref) if Path(ref).expanduser().exists() else ref


def _tokenizer_files(top: set[str]) -> list[str]:
    """The files `find_tokenizer` would pick in the full folder: spiece.model / tokenizer.model, else
    every *.model, else tokenizer.json; with the small configs that say its kind."""
    models = [n for n in NAMED_TOKENIZERS if n in top][:1] or sorted(f for f in top if f.endswith(".model"))
    main = models or (["tokenizer.json"] if "tokenizer.json" in top else [])
    return main + [n for n in SMALL_CONFIGS if n in top]


def tokenizer_files(files: Iterable[str], where: str) -> Choice:
    """A repo's file listing -> its tokenizer files alone (for `--tokenizer org/name`)."""
    tok = _tokenizer_files({f for f in files if "/" not in f})
    if not tok or tok[0] in SMALL_CONFIGS:
        raise HubError(
            f"{where}: no tokenizer files in this repo (looked for {' / '.join(NAMED_TOKENIZERS)}, a *.model or "
            "tokenizer.json at the top level)"
        )
    return Choice(tuple(tok), "", True)


def needed_files(files: Iterable[str], where: str) -> Choice:
    """A repo's file listing -> the files to download, per format, first match wins:
    open_clip (`open_clip_model.safetensors` or `open_clip_pytorch_model.bin`, `open_clip_config.json`;
    first because timm's repos also hold timm's own config.json + model.safetensors), Hugging Face
    (config.json + model.safetensors or pytorch_model.bin), our model file (the one top-level *.pt, with
    its .sha256), a big_vision .npz (the one top-level *.npz). Tokenizer files of the folder come along."""
    top = {f for f in files if "/" not in f}
    tok = _tokenizer_files(top)
    oc = [n for n in OPEN_CLIP_WEIGHTS if n in top][:1]
    if oc:
        extra = ["open_clip_config.json"] if "open_clip_config.json" in top else []
        return Choice(tuple(oc + extra + tok), oc[0], bool(tok))
    hf = [n for n in HF_WEIGHTS if n in top][:1] or _shards(top)
    if hf and "config.json" in top:
        return Choice(tuple(["config.json"] + hf + tok), "", bool(tok))
    for suffix, what in ((".pt", "model files of ours"), (".npz", "big_vision .npz files")):
        found = sorted(f for f in top if f.endswith(suffix))
        if len(found) > 1:
            raise HubError(f"{where}: {len(found)} {what} ({', '.join(found[:5])}); keep one per repo")
        if found:
            sidecar = [f"{found[0]}.sha256"] if f"{found[0]}.sha256" in top else []
            own = suffix == ".pt"  # our file carries its tokenizer
            return Choice(tuple(found + sidecar + ([] if own else tok)), found[0], own or bool(tok))
    raise HubError(
        f"{where}: no model files siglip reads (looked for {' / '.join(OPEN_CLIP_WEIGHTS)}, config.json + "
        f"{' / '.join(HF_WEIGHTS)}, one *.pt or one *.npz at the top level); the repo has {sorted(top)[:10]}"
    )


def _shards(top: set[str]) -> list[str]:
    """A checkpoint split by transformers' save_pretrained: its index and every shard file of the kind the
    index names (model-00001-of-00003.safetensors, ...); [] when the repo has none."""
    for index, shard in ((SHARD_INDEXES[0], SAFETENSORS_SHARD), (SHARD_INDEXES[1], BIN_SHARD)):
        if index in top:
            return [index] + sorted(f for f in top if shard.fullmatch(f))
    return []


def _hub(ref: str):
    try:
        import huggingface_hub
    except ImportError as e:
        raise ModuleNotFoundError(
            f"{ref}: not a local path, and reading a Hugging Face Hub id needs huggingface_hub: "
            "pip install 'siglip[hub]'"
        ) from e
    return huggingface_hub


def _offline(hub) -> bool:
    is_offline = getattr(hub, "is_offline_mode", None)
    return is_offline() if is_offline else bool(hub.constants.HF_HUB_OFFLINE)


def _snapshot(hub, repo: str, rev: str) -> Path | None:
    """The cached snapshot folder of `repo` at `rev`, in the cache layout huggingface_hub documents
    (`models--org--name/refs/<branch or tag>` holds the commit; `snapshots/<commit>/` the files)."""
    from huggingface_hub.file_download import repo_folder_name

    storage = Path(hub.constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    commit = rev
    if not _COMMIT.fullmatch(rev):
        ref_file = storage / "refs" / rev
        if not ref_file.is_file():
            return None
        commit = ref_file.read_text().strip()
    folder = storage / "snapshots" / commit
    return folder if folder.is_dir() else None


def _from_cache(hub, repo: str, rev: str, where: str, choose: Chooser) -> tuple[Path, Choice] | None:
    """A cached snapshot that holds every file `choose` asks for (links into the blob store that
    resolve), or None."""
    folder = _snapshot(hub, repo, rev)
    if folder is None:
        return None
    present = [f.name for f in folder.iterdir() if f.is_file()]  # is_file follows the link: a broken one is absent
    try:
        choice = choose(present, where)
    except HubError:
        return None
    if not choice.has_tokenizer and tokenizer_repo(folder / choice.target, repo):
        choice = Choice(choice.files, choice.target, True)  # open_clip's config names where its tokenizer is
    return folder, choice


def _fetch_hint(repo: str, rev: str | None) -> str:
    return f"hf download {repo}" + (f" --revision {rev}" if rev else "")


def _download(hub, repo: str, rev: str, where: str, choose: Chooser) -> tuple[Path, Choice]:
    """List the repo at `rev`, then `snapshot_download` only the files `choose` picks (its progress
    bars; a file already in the cache is not fetched again). Every client error becomes a `HubError`."""
    err = hub.errors if hasattr(hub, "errors") else hub.utils
    try:
        info = hub.HfApi().model_info(repo, revision=rev)
        choice = choose([s.rfilename for s in info.siblings or []], where)
        log.info("%s: downloading %s", where, ", ".join(choice.files))
        folder = hub.snapshot_download(repo, revision=rev, allow_patterns=list(choice.files))
    except HubError:
        raise
    except err.GatedRepoError as e:
        raise HubError(
            f"{where}: a gated repo; accept its terms at https://huggingface.co/{repo} and log in "
            "(hf auth login, or set HF_TOKEN)"
        ) from e
    except err.RepositoryNotFoundError as e:
        raise HubError(
            f"{where}: no such model on the Hub (or a private one: log in with hf auth login, or set HF_TOKEN)"
        ) from e
    except err.RevisionNotFoundError as e:
        raise HubError(f"{where}: the repo has no revision {rev!r} (a branch, tag or commit)") from e
    except err.OfflineModeIsEnabled as e:
        raise HubError(_not_cached(repo, None if rev == "main" else rev, where, True)) from e
    except Exception as e:  # noqa: BLE001 - no network, a proxy, a disk error: named, never a client traceback
        reason = f"the Hub could not be reached ({type(e).__name__}: {str(e)[:200]})"
        raise HubError(_not_cached(repo, None if rev == "main" else rev, where, False, reason)) from e
    return Path(folder), choice


def _not_cached(repo: str, rev: str | None, where: str, offline: bool, reason: str = "") -> str:
    why = "offline mode is on: HF_HUB_OFFLINE=1" if offline else reason
    unset = " (or unset HF_HUB_OFFLINE here)" if offline else ""
    return (
        f"{where}: not a local path, and this Hugging Face Hub model is not in the cache ({why}). "
        f"Fetch it where the Hub is reachable: {_fetch_hint(repo, rev)}{unset}, then run again"
    )


def resolve_model(ref: str | os.PathLike) -> Path:
    """A model reference -> a local folder or file for the format readers (`load_payload`).

    An existing path, a `Path` object, or anything not spelled as a Hub id comes back as a `Path`
    (a missing one is reported by the reader: "checkpoint not found"). A Hub id comes back as the
    cached snapshot folder (Hugging Face layout) or the file that pins the format in it (open_clip
    weights, our .pt, a .npz), downloading the needed files when they are not cached and the Hub
    may be used. Raises `HubError` (a FileNotFoundError) or ModuleNotFoundError without the extra."""
    return _resolve(ref, needed_files, "the tokenizer")


def resolve_tokenizer(ref: str | os.PathLike) -> Path:
    """A tokenizer reference (`--tokenizer`, `siglip.load(tokenizer=)`) -> a local file or folder.

    An existing path comes back as it is. A Hub id (the spellings of `resolve_model`) comes back as
    its snapshot folder holding only the repo's tokenizer files (`tokenizer_files`): the cache
    first, else a download of those files alone, so `--tokenizer google/siglip-base-patch16-224`
    fetches its spiece.model and small configs, never its weights."""
    return _resolve(ref, tokenizer_files, "")


def _resolve(ref: str | os.PathLike, choose: Chooser, completes: str) -> Path:
    """`ref` through the cache, then the Hub; `completes`: what a download may still add to a cached
    snapshot that lacks it (the model's tokenizer), '' for nothing."""
    path = Path(ref).expanduser()
    spelled = None if isinstance(ref, Path) or path.exists() else parse_hub_id(str(ref))
    if spelled is None:
        return path
    repo, rev = spelled
    where = str(ref)
    hub = _hub(where)
    cached = _from_cache(hub, repo, rev or "main", where, choose)
    if cached is None or (completes and not cached[1].has_tokenizer):
        if _offline(hub):
            if cached is None:
                raise HubError(_not_cached(repo, rev, where, True))
        else:
            try:
                cached = _download(hub, repo, rev or "main", where, choose)
            except HubError:
                if cached is None:
                    raise
                log.warning("%s: the Hub could not complete %s; using the cached weights alone", where, completes)
    folder, choice = cached
    return folder / choice.target if choice.target else folder


def tokenizer_repo(where: Path, repo: str = "") -> str:
    """The Hub id open_clip's config beside `where` names for the tokenizer (text_cfg.hf_tokenizer_name,
    a repo other than `repo`), or ''. open_clip loads the tokenizer from there; a model pushed without
    its tokenizer files keeps it only there."""
    cfg_file = (where if where.is_dir() else where.parent) / "open_clip_config.json"
    try:
        text_cfg = json.loads(cfg_file.read_text()).get("model_cfg", {}).get("text_cfg", {})
    except (OSError, ValueError, AttributeError):
        return ""
    name = text_cfg.get("hf_tokenizer_name") if isinstance(text_cfg, dict) else None
    spelled = parse_hub_id(name) if isinstance(name, str) else None
    return name if spelled is not None and spelled[0] != repo else ""
