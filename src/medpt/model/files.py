"""The files of a model, tokenizer, adapter or checkpoint folder, checked before any data or weight is loaded.

transformers, PEFT and safetensors report a damaged or mismatched folder late (after the data is prepared), as a
traceback, or not at all: a config.json describing more layers than the weights hold loads them randomly
initialised, an adapter whose tensors name no module of the base applies nothing, a tokenizer with more tokens than
the model's embeddings fails on the first batch. The checks here read JSON files and safetensors headers (and an
adapter's own small tensors) and build the model empty, on the meta device: well under a second whatever the
model's size, and every problem is one line naming the file.

1. config.json: a JSON object, a model_type transformers knows, values a causal LM can be built from;
2. the weights: safetensors files (and their index) with readable headers that cover each file, and a tensor of the
   shape the config implies for every parameter;
3. a tokenizer: its JSON files parse, it loads, it has an EOS token, and its ids fit the model's embeddings;
4. an adapter: adapter_config.json with values of the right types; LoRA matrices of the configured rank, each on a
   module of the base with that module's shape; every configured target present in the base and adapted;
5. a checkpoint to resume from: complete (trainer state, optimizer, scheduler) and trained with the same base and
   LoRA settings as the run resuming it.
"""

from __future__ import annotations

import functools
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpt.errors import MedptError
from medpt.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_RECORD, OPTIMIZER_STATE, SCHEDULER_STATE, TRAINER_STATE
from medpt.strictjson import dumps

CONFIG = "config.json"
SAFE_WEIGHTS, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"  # the names transformers loads
GENERATION_CONFIG = "generation_config.json"
AGAIN = "copy or download it again"


def read_json(path: Path, advice: str = AGAIN) -> dict[str, Any]:
    """A JSON object from a file, or one line naming the file: missing, empty, not UTF-8, not JSON, not an object."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise MedptError(f"{path}: missing; {advice}") from None
    except UnicodeDecodeError as e:
        byte = f"byte 0x{e.object[e.start]:02x} at offset {e.start}"
        raise MedptError(f"{path}: not UTF-8 text ({byte}); {advice}") from None
    except OSError as e:
        raise MedptError(f"{path}: cannot read it ({e.strerror})") from None
    if not text.strip():
        raise MedptError(f"{path}: empty file; {advice}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MedptError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); {advice}") from None
    except RecursionError:
        raise MedptError(f"{path}: JSON nested too deeply to be a configuration file; {advice}") from None
    if not isinstance(data, dict):
        raise MedptError(f"{path}: expected a JSON object ({{...}}), got a {type(data).__name__}; {advice}")
    return data


def first_lines(error: BaseException, n: int = 2) -> str:
    """A library's error in one line: its type and first lines (transformers puts the field on line 1, why on 2)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()][:n]
    return f"{type(error).__name__}: {' '.join(lines)}"[:400]


# --- 1, 2. A model folder ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFacts:
    """A model as its folder describes it, nothing loaded: its config and its empty (meta-device) module tree."""

    name: str  # as given: a hub id or a path
    local: Path
    config: Any  # transformers.PretrainedConfig
    shapes: dict[str, tuple[int, ...]]  # parameter name → shape
    linear: dict[str, tuple[int, int]]  # nn.Linear (or GPT-2's Conv1D) module name → (in_features, out_features)
    embeddings: dict[str, tuple[int, int]]  # nn.Embedding module name → (num_embeddings, embedding_dim)
    modules: frozenset[str]  # every module name
    leaves: frozenset[str]  # the modules without children: what a LoRA target can name
    input_embeddings: str | None  # the module embedding token ids (model.embed_tokens)
    output_head: str | None  # the output embeddings' module (lm_head): PEFT's all-linear leaves it out

    @property
    def positions(self) -> int | None:
        """The longest sequence the model takes (max_position_embeddings or its equivalents)."""
        config = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        return positions_of(config.to_dict())

    @property
    def vocab_size(self) -> int | None:
        """Rows of the input embeddings: the largest token id the model takes, plus one."""
        if self.input_embeddings in self.embeddings:
            return self.embeddings[self.input_embeddings][0]
        return getattr(self.config, "vocab_size", None)

    def linear_names(self) -> set[str]:
        """Leaf names of the linear layers (q_proj, ...), as --target_modules names them; the output head left out."""
        return {n.rsplit(".", 1)[-1] for n in self.linear if n != self.output_head}


def positions_of(config: dict[str, Any]) -> int | None:
    """max_position_embeddings, or what other architectures call it, from a config.json's values."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def inspect_model(local: Path, name: str, trust_remote_code: bool = False) -> ModelFacts:
    """Check config.json and the safetensors headers of a local model folder (module docstring, 1 and 2). Cached by
    the files' sizes and times: a command checks its model once, however many of its steps ask."""
    files = [local / CONFIG, *sorted(local.glob("*.safetensors")), local / SAFE_INDEX]
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file())
    return _inspect(str(local), name, trust_remote_code, stamp)


@functools.lru_cache(maxsize=8)
def _inspect(local_dir: str, name: str, trust_remote_code: bool, _stamp: tuple) -> ModelFacts:
    facts = _skeleton(Path(local_dir), name, trust_remote_code)
    _check_weights(facts)
    return facts


def _skeleton(local: Path, name: str, trust_remote_code: bool) -> ModelFacts:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.pytorch_utils import Conv1D

    path = local / CONFIG
    if not path.is_file():
        held = ", ".join(sorted(p.name for p in local.iterdir() if not p.name.startswith("."))[:8]) or "nothing"
        raise MedptError(f"{path}: missing, so {name} is not a model folder (it holds {held}); {AGAIN}")
    raw = read_json(path)
    if (local / GENERATION_CONFIG).is_file():  # read when generating; transformers skips a damaged one
        read_json(local / GENERATION_CONFIG)
    remote = trust_remote_code and "auto_map" in raw
    model_type = raw.get("model_type")
    if not remote and (not isinstance(model_type, str) or model_type not in CONFIG_MAPPING):
        import transformers

        what = f"model_type {model_type!r}" if model_type is not None else "no model_type"
        raise MedptError(f"{path}: {what} is not an architecture transformers {transformers.__version__} knows; "
                         "upgrade transformers, or check the file (--trust_remote_code for a model that ships its "
                         "own code)")  # fmt: skip
    # Whatever transformers raises for a value it cannot take (its strict dataclass validation, or the model's own
    # __init__ for a negative size or heads that do not divide the hidden size) is a fault of this file: one line.
    try:
        config = AutoConfig.from_pretrained(local, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - see above
        raise MedptError(f"{path}: transformers cannot build the model from it ({first_lines(e)})") from None
    names = {id(m): n for n, m in model.named_modules()}
    head = names.get(id(model.get_output_embeddings())) if hasattr(model, "get_output_embeddings") else None
    return ModelFacts(
        name=name,
        local=local,
        config=config,
        shapes={n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)},
        linear={
            n: (m.in_features, m.out_features) if isinstance(m, torch.nn.Linear) else tuple(m.weight.shape)
            for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, Conv1D))
        },
        embeddings={
            n: (m.num_embeddings, m.embedding_dim)
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Embedding)
        },
        modules=frozenset(n for n, _ in model.named_modules() if n),
        leaves=frozenset(n for n, m in model.named_modules() if n and next(m.children(), None) is None),
        input_embeddings=names.get(id(model.get_input_embeddings())),
        output_head=head,
    )


def weight_files(local: Path) -> list[Path]:
    """The safetensors files transformers loads: those the index names, else model.safetensors."""
    index = local / SAFE_INDEX
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise MedptError(f"{index}: no weight_map of tensor → file; {AGAIN}")
        names = sorted({str(v) for v in weight_map.values()})
        missing = [n for n in names if not (local / n).is_file()]
        if missing:
            raise MedptError(f"{index} names {', '.join(missing[:3])}, which {local} does not hold; {AGAIN}")
        return [local / n for n in names]
    if (local / SAFE_WEIGHTS).is_file():
        return [local / SAFE_WEIGHTS]
    others = sorted(p.name for p in local.glob("*.safetensors"))
    if others:
        raise MedptError(f"{local}: {', '.join(others[:3])} without {SAFE_INDEX} (which says which tensor is in "
                         f"which file); {AGAIN}")  # fmt: skip
    raise MedptError(
        f"{local}: no .safetensors weights. medpt does not load pickle-based .bin weights (they can run code); "
        "convert them once with safetensors, or use a model that ships safetensors"
    )


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of a safetensors file, from its header (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        # A truncated file fails here: safetensors checks that the header's offsets cover the file exactly.
        raise MedptError(f"{path}: not a readable safetensors file ({e}); {AGAIN}") from None


def _check_weights(facts: ModelFacts) -> None:
    """Every parameter the config implies has a tensor of its shape in the weights (a tied pair needs one)."""
    found: dict[str, tuple[int, ...]] = {}
    where: dict[str, str] = {}
    for path in weight_files(facts.local):
        for key, shape in tensor_shapes(path).items():
            found[key], where[key] = shape, path.name
    if getattr(facts.config, "quantization_config", None):
        return  # pre-quantized weights are packed: their shapes are not the config's
    wrong = [k for k in facts.shapes if k in found and found[k] != facts.shapes[k]]
    if wrong:
        k = wrong[0]
        raise MedptError(
            f"{facts.local / where[k]}: tensor {k} is {list(found[k])}, but {CONFIG} implies {list(facts.shapes[k])}"
            f"{f' ({len(wrong)} tensors differ)' if len(wrong) > 1 else ''}: the config and the weights come from "
            "different models"
        )
    # transformers renames some checkpoints' keys while loading; only when every stored name is one the model uses is
    # a name the model has and the files lack really missing (it would be initialised at random, with a warning).
    if any(k not in facts.shapes for k in found):
        return
    missing = [k for k in facts.shapes if k not in found and not _tied_present(k, facts, found)]
    if missing:
        raise MedptError(
            f"{facts.local}: the weights hold no tensor for {len(missing)} parameter(s) {CONFIG} describes "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): the config and the weights come from "
            f"different models, or a weights file is missing; {AGAIN}"
        )


def _tied_present(key: str, facts: ModelFacts, found: dict) -> bool:
    """A parameter tied to the input embeddings (lm_head with tie_word_embeddings) is saved once, under either name."""
    if not getattr(facts.config, "tie_word_embeddings", False) or key.rsplit(".", 1)[0] != facts.output_head:
        return False
    return f"{facts.input_embeddings}.weight" in found


# --- 3. A tokenizer -------------------------------------------------------------------------------------------------
def check_tokenizer_fits(tokenizer: Any, tokenizer_dir: str | Path, facts: ModelFacts) -> None:
    """Token ids past the model's embeddings crash the first batch (an index error, on a GPU a device-side assert)."""
    vocab = facts.vocab_size
    if vocab is not None and len(tokenizer) > vocab:
        raise MedptError(
            f"the tokenizer in {tokenizer_dir} has {len(tokenizer):,} tokens, but {facts.name} embeds {vocab:,} "
            f"(vocab_size in its {CONFIG}): the tokenizer belongs to another model; use the model's own"
        )


# --- 4. An adapter --------------------------------------------------------------------------------------------------
# The adapter_config.json fields medpt and PEFT rely on, by type. PEFT reads the file without checking them, and a
# wrong type fails later, deep inside it (r: "8" → a TypeError on the first comparison).
_NUMBER = (int, float)
LORA_FIELDS: dict[str, tuple[type, ...]] = {
    "r": (int,),
    "lora_alpha": _NUMBER,
    "lora_dropout": _NUMBER,
    "target_modules": (list, str),
    "modules_to_save": (list, type(None)),
    "use_rslora": (bool,),
    "use_dora": (bool,),
    "rank_pattern": (dict, type(None)),
    "alpha_pattern": (dict, type(None)),
    "base_model_name_or_path": (str, type(None)),
    "fan_in_fan_out": (bool,),
}


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """adapter_config.json, its LoRA fields checked for type and range (unknown keys are kept: newer PEFT writes
    more, and PEFT itself ignores what it does not know)."""
    path = adapter_dir / ADAPTER_CONFIG
    raw = read_json(path, "copy the adapter again or retrain it")
    from peft import PeftType

    kind = raw.get("peft_type", "LORA")
    if kind not in {t.value for t in PeftType}:
        raise MedptError(f"{path}: peft_type {kind!r} is not one PEFT knows ({', '.join(t.value for t in PeftType)})")
    if kind != "LORA":
        return raw
    for key, types in LORA_FIELDS.items():
        value = raw.get(key)
        if key in raw and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise MedptError(f"{path}: {key} must be {names}, got {dumps(value)}")
    if not isinstance(raw.get("r"), int) or raw["r"] < 1:
        raise MedptError(f"{path}: r (the LoRA rank) must be a whole number ≥ 1, got {dumps(raw.get('r'))}")
    if isinstance(raw.get("target_modules"), list) and not all(isinstance(t, str) for t in raw["target_modules"]):
        raise MedptError(f"{path}: target_modules must be a list of module names, got {raw['target_modules']}")
    return raw


# A LoRA tensor's key: base_model.model.<module>.<part>[.weight]; anything else is a module trained in full
# (modules_to_save) or a DoRA base layer, stored under the base parameter's own name.
_LORA_KEY = re.compile(r"(?:base_model\.model\.)?(.+?)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                       r"lora_magnitude_vector)(?:\.weight)?")  # fmt: skip


def check_adapter_fits(adapter_dir: Path, facts: ModelFacts, targets_must_exist: bool = True) -> list[str]:
    """The adapter's tensors against its config and the base (see the module docstring, 4). Returns the configured
    target module names that match no module of the base; with `targets_must_exist` they are an error."""
    config = read_adapter_config(adapter_dir)
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise MedptError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}; was the training run finished?")
    shapes = tensor_shapes(weights)
    if config.get("peft_type", "LORA") != "LORA":
        return []
    ranks: dict[str, int] = {}
    for key, shape in shapes.items():
        match = _LORA_KEY.fullmatch(key)
        if match is None:
            _check_full_tensor(weights, key, shape, facts)
            continue
        module, part = match.groups()
        ranks.setdefault(module, 0)
        _check_lora_tensor(weights, key, module, part, shape, facts, config, ranks)
    unmatched, selected = _targets(adapter_dir / ADAPTER_CONFIG, config, facts)
    if unmatched and targets_must_exist:
        raise MedptError(
            f"{adapter_dir / ADAPTER_CONFIG}: target module(s) {', '.join(unmatched)} match no module of "
            f"{facts.name}: the adapter was trained on another model"
        )
    # PEFT skips, with a warning at most, tensors of modules the config does not select, and leaves a selected
    # module without tensors at its initialisation (B = 0): either way part of the adapter is silently not applied.
    for modules, what in ((selected - set(ranks), "no LoRA matrices for"), (set(ranks) - selected, "matrices for")):
        if modules:
            names = sorted(modules)
            raise MedptError(
                f"{weights}: {what} {len(names)} module(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                f" {'that' if what.startswith('no') else 'not'} selected by target_modules in {ADAPTER_CONFIG}: the "
                f"two files belong to different adapters, or the weights are incomplete; {AGAIN}"
            )
    return unmatched


def _check_lora_tensor(weights: Path, key: str, module: str, part: str, shape: tuple[int, ...], facts: ModelFacts,
                       config: dict[str, Any], ranks: dict[str, int]) -> None:  # fmt: skip
    if module not in facts.modules:
        raise MedptError(f"{weights}: tensor {key} adapts {module}, which {facts.name} does not have: the adapter "
                         "was trained on another model")  # fmt: skip
    dims = facts.linear.get(module) or facts.embeddings.get(module)
    if dims is None:  # a layer type medpt does not know the shape rule of (PEFT checks it when loading)
        return
    # Linear: A is [r, in], B is [out, r]. Embedding (num, dim): A is [r, num], B is [dim, r]. DoRA: a magnitude [out].
    fan_in, fan_out = dims
    expected_rank = config["r"] if not config.get("rank_pattern") else None  # per-module ranks: A and B must agree
    if part == "lora_magnitude_vector":
        ok = shape == (fan_out,) if module in facts.linear else shape == (dims[1],)
        rank = None
    else:
        rank = shape[0] if part in ("lora_A", "lora_embedding_A") else shape[-1]
        want = (rank, fan_in) if part in ("lora_A", "lora_embedding_A") else (fan_out, rank)
        ok = len(shape) == 2 and shape == want
    if not ok:
        raise MedptError(f"{weights}: tensor {key} is {list(shape)}, which does not fit {module} of {facts.name} "
                         f"(in {fan_in}, out {fan_out}): the adapter was trained on another model")  # fmt: skip
    if rank is None:
        return
    if expected_rank is not None and rank != expected_rank:
        raise MedptError(f"{weights}: tensor {key} has rank {rank}, but {ADAPTER_CONFIG} says r={expected_rank}: "
                         "the config and the weights belong to different adapters")  # fmt: skip
    if ranks[module] and ranks[module] != rank:
        raise MedptError(f"{weights}: the LoRA matrices of {module} have ranks {ranks[module]} and {rank}; {AGAIN}")
    ranks[module] = rank


def _check_full_tensor(weights: Path, key: str, shape: tuple[int, ...], facts: ModelFacts) -> None:
    """A tensor that is not a LoRA matrix: a parameter of the base trained in full, of the base's shape, or a tensor
    PEFT keeps inside one of the base's layers (trainable token rows, ...); not one of a module the base lacks."""
    name = key.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
    parts = name.split(".")
    if name in facts.shapes and facts.shapes[name] != shape:
        what = f"is {list(facts.shapes[name])} in {facts.name}"
    elif name not in facts.shapes and not {".".join(parts[:i]) for i in range(1, len(parts))} & facts.leaves:
        what = f"is not in {facts.name}"
    else:
        return
    raise MedptError(
        f"{weights}: tensor {key} is {list(shape)}, but {name} {what}: the adapter was trained on another model"
    )


def _targets(path: Path, config: dict[str, Any], facts: ModelFacts) -> tuple[list[str], set[str]]:
    """(configured target names that match no module, the modules the targets select), matched by PEFT itself."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    targets = config.get("target_modules") or []
    if targets == "all-linear":  # PEFT resolves it when applying (and saves the names): every Linear but the head
        return [], {n for n in facts.linear if n != facts.output_head}
    known = {k: v for k, v in config.items() if k in LoraConfig.__dataclass_fields__ and k != "peft_type"}
    try:
        lora = LoraConfig(**known)
    except Exception as e:  # noqa: BLE001 - PEFT's own validation of a combination of values in this file
        raise MedptError(f"{path}: PEFT refuses it ({first_lines(e)})") from None
    selected = {n for n in facts.leaves if check_target_module_exists(lora, n)}
    if isinstance(targets, str):  # a regex over module names
        return ([] if selected else [targets]), selected
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in facts.modules)]
    return unmatched, selected


# --- 5. A checkpoint to resume from --------------------------------------------------------------------------------
CHECKPOINT_FILES = (TRAINER_STATE, OPTIMIZER_STATE, SCHEDULER_STATE)  # what Trainer restores a run from
# The LoRA settings a resumed run must share with the checkpoint: adapter_config.json key → this run's flag.
SAME_LORA = {"r": "lora_rank", "lora_alpha": "lora_alpha", "use_dora": "use_dora", "use_rslora": "use_rslora"}


def check_checkpoint(path: Path, lora: Any, facts: ModelFacts) -> None:
    """A checkpoint Trainer can resume this run from: its files complete and readable, its weights this run's shape,
    its LoRA settings and its base this run's.
    Trainer itself checks none of it: a missing optimizer.pt silently restarts Adam, another rank is a traceback."""
    flag = f"--resume_from_checkpoint {path}"
    step = read_json(path / TRAINER_STATE, "resume from another checkpoint").get("global_step")
    if not isinstance(step, int):
        raise MedptError(f"{path / 'trainer_state.json'}: no global_step: not a checkpoint Trainer wrote")
    for name in CHECKPOINT_FILES[1:]:
        try:
            zipfile.ZipFile(path / name).close()  # torch.save's format: a zip, whose directory sits at the end
        except FileNotFoundError:
            raise MedptError(f"{flag}: no {name}, so it is not a complete checkpoint; resume from another") from None
        except (zipfile.BadZipFile, OSError):
            raise MedptError(f"{path / name}: damaged (cut short?); resume from another checkpoint") from None
    if lora.use_peft:
        if not (path / ADAPTER_CONFIG).is_file():
            raise MedptError(f"{flag}: no {ADAPTER_CONFIG}: it is a checkpoint of a full fine-tuning run, and this "
                             "run trains LoRA (--use_peft false resumes it)")  # fmt: skip
        check_adapter_fits(path, facts)
        _same_lora(path, read_adapter_config(path), lora, facts)
    elif inspect_model(path, str(path)).shapes != facts.shapes:
        raise MedptError(f"{flag}: its model is not the shape of {facts.name}: another model's checkpoint")
    _same_base(path, facts)


def _same_lora(path: Path, saved: dict[str, Any], lora: Any, facts: ModelFacts) -> None:
    for key, flag in SAME_LORA.items():
        ours = getattr(lora, flag)
        theirs = saved.get(key, False if isinstance(ours, bool) else None)
        if theirs != ours:
            raise MedptError(f"--resume_from_checkpoint {path}: it was trained with {key}={dumps(theirs)} "
                             f"({ADAPTER_CONFIG}), this run with --{flag} {ours}: another run's checkpoint. Resume "
                             "with its settings, or start over")  # fmt: skip
    wanted = facts.linear_names() if lora.target_modules == ["all"] else set(lora.target_modules)
    saved_targets = saved.get("target_modules")
    if isinstance(saved_targets, list) and set(saved_targets) != wanted:
        raise MedptError(f"--resume_from_checkpoint {path}: it adapts {','.join(sorted(saved_targets))}, this run "
                         f"--target_modules {','.join(sorted(wanted))}: another run's checkpoint")  # fmt: skip


def _same_base(path: Path, facts: ModelFacts) -> None:
    """The run a checkpoint sits in records its base's fingerprint when it finishes; before that, the adapter's
    config names the base's folder, which is compared when it is a folder here."""
    record = path.parent / BASE_RECORD
    if record.is_file():
        recorded, where = read_json(record).get("fingerprint"), record
    else:
        config = path / ADAPTER_CONFIG
        named = read_json(config).get("base_model_name_or_path") if config.is_file() else None
        if not isinstance(named, str) or not Path(named).is_dir() or Path(named).resolve() == facts.local.resolve():
            return
        recorded, where = weights_fingerprint(named), path / ADAPTER_CONFIG
    if recorded != weights_fingerprint(facts.local):
        raise MedptError(
            f"--resume_from_checkpoint {path}: it was trained on another base model ({where}), not "
            f"{facts.name}: another run's checkpoint. Resume it with its own base, or start over"
        )


def weights_fingerprint(local_dir: str | Path) -> str:
    """Identity of a model's weights without reading all of them: config.json, and for every safetensors file its
    name, size, header (tensor names, shapes, dtypes) and first and last MiB of data, which differ between any two
    trainings or random initialisations."""
    import hashlib

    directory = Path(local_dir)
    h = hashlib.sha256((directory / CONFIG).read_bytes() if (directory / CONFIG).is_file() else b"")
    for path in sorted(directory.glob("*.safetensors")):
        size = path.stat().st_size
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            h.update(f"{path.name}:{size}".encode() + f.read(header_len) + f.read(1 << 20))
            f.seek(max(8 + header_len, size - (1 << 20)))
            h.update(f.read())
    return h.hexdigest()
