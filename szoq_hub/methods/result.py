"""`MethodResult`: what reads one method's finished run (its final file) for `eval`, `merge`,
`export peft` and `delta push`.

Each method's `result.py` subclasses it; `training/evaluate.py`, `training/merge.py`,
`export/peft.py` and `methods/sharing.py` find the class with `method_of_result(ref)` and call it,
so the commands hold no per-method branches. A method without a PEFT export or a Hub artifact
keeps the defaults here, which refuse with a message naming the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..core import schema
from ..core.errors import ConfigError, MaskError, SzoqError
from ..data.models import ModelSource


@dataclass
class Scorable:
    """A model ready to score, from a run's result (`MethodResult.for_eval`).

    Attributes:
        model: What the scoring forwards run.
        tokenizer: Its tokenizer.
        mode: How `EvalResult.mode` names it (`delta`, `dense`, `lora`); `+icl-K` is added by eval.
        dtype: The compute dtype it runs in (`dtype_name`), as EvalResult records it.
    """

    model: Any
    tokenizer: Any
    mode: str
    dtype: str = "fp32"


@dataclass
class Merged:
    """A full-precision transformers model with a run's result in its weights (`MethodResult.merged`).

    Attributes:
        model, tokenizer: What `merge` saves.
        source: The base model it was loaded from.
        nnz: How many trained values went in (for the log).
    """

    model: Any
    tokenizer: Any
    source: ModelSource
    nnz: int


class MethodResult:
    """The finished run of one method: its final file, and what `eval`, `merge`, `export peft` and
    `delta push` do with it. Class-level API: nothing is held between calls.

    Class attributes:
        file: The run folder's final file (the method's `MethodConfig.final_file`).
        describes: What that file holds, for messages (`trained weights`, `a LoRA adapter`).
        hub: The transport `Artifact` a push uploads, or None (`delta push` refuses the run).
        peft_adapter: (PEFT's peft_type, szoq_format header, a weight key suffix) of the adapter its
            `export_peft` writes, which `verify_adapter` accepts before a push; None without one.
    """

    file: ClassVar[str] = ""
    describes: ClassVar[str] = "a fine-tuned result"
    flag: ClassVar[str] = ""  # how users chose the method (`--dense`), for messages
    hub: ClassVar[Any] = None
    peft_adapter: ClassVar[tuple[str, str, str] | None] = None  # what its PEFT export writes: (peft_type, szoq_format, weight suffix)

    @classmethod
    def path_of(cls, ref: str | Path) -> Path:
        """The final file of a run folder, or `ref` itself when it is a file."""
        path = Path(ref).expanduser()
        return path if path.suffix == ".safetensors" else path / cls.file

    @classmethod
    def holds(cls, ref: str | Path) -> bool:
        """Whether `ref` (a run folder or a file) is this method's finished run."""
        try:
            path = cls.path_of(ref)
            return path.name == cls.file and path.is_file()
        except OSError:  # a name no file system accepts
            return False

    @classmethod
    def recorded_method(cls, ref: str | Path) -> str | None:
        """The method a finished run's final file records by name (`settings["method"]`, a JSON string in
        its safetensors header; only the header is read), None when it records none or cannot be read.

        `method_of_result` asks it only when several methods share this result class.
        """
        try:
            name = schema.settings_of(schema.read_header(cls.path_of(ref)).metadata).get("method")
        except SzoqError:
            return None  # its loader says what is wrong with the file
        return name if isinstance(name, str) else None

    @classmethod
    def check_eval(cls, ref: str | Path, *, mask: str | None, quant: str | None, dtype: str | None) -> None:
        """Refuse eval options the run cannot take, before any data or weights load.

        Raises:
            ConfigError: an option that does not apply.
        """

    @classmethod
    def for_eval(cls, ref: str | Path, *, model: str | None, mask: str | None, quant: str | None, dtype: str | None,
                 revision: str | None, device: Any) -> Scorable:
        """The base model with the run's result, ready to score (`szoq eval --delta`).

        Args:
            ref: The run folder or its final file.
            model, mask, quant, dtype, revision: As given to eval (None: the run's own, or the defaults).
            device: The resolved device.
        """
        raise NotImplementedError

    @classmethod
    def merged(cls, ref: str | Path, *, model: str | None, mask_ref: str | None, revision: str | None, device: Any) -> Merged:
        """The fp32 base model with the run's result written into its weights (`szoq merge`)."""
        raise NotImplementedError

    @classmethod
    def export_peft(cls, peft: Any, ref: str | Path, out: Path, *, model: str | None, mask_ref: str | None, revision: str | None):
        """Write the run as a PEFT adapter folder (`szoq export peft`); returns a `PeftExport`.

        Raises:
            MaskError: the method has no PEFT form (the default).
        """
        raise cls.not_a_delta(ref, "PEFT export")

    @classmethod
    def push(cls, folder: Path, **kwargs: Any):
        """Publish a finished run (`delta push`); only for a method with a `hub` artifact (the sparse delta)."""
        raise cls.not_a_delta(folder, "pushing")

    @classmethod
    def pull(cls, repo_id: str, **kwargs: Any):
        """Fetch and verify a run from the Hub (`delta pull`); only for a method with a `hub` artifact."""
        raise cls.not_a_delta(repo_id, "pulling")

    @classmethod
    def not_a_delta(cls, ref: str | Path, what: str) -> MaskError:
        """The error for a command that takes only sparse deltas, given this method's run."""
        folder = Path(ref) if Path(ref).suffix != ".safetensors" else Path(ref).parent
        return MaskError(f"{folder} is a {cls.flag} run: it holds {cls.describes} ({cls.file}), not a sparse delta",
                         hint=f"szoq eval / szoq merge --delta {folder} take it; {what} is for sparse deltas")


def refuse_mask_for(ref: str | Path, mask: str | None, *, what: str, action: str) -> None:
    """Refuse `--mask` for a run whose method trains no masked weights.

    Raises:
        ConfigError: `mask` given.
    """
    if mask is not None:
        raise ConfigError(f"--mask does not apply to {ref}: {what}", hint=action)
