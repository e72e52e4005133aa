"""The bundled model is checked before use: an altered or missing file is refused."""

from __future__ import annotations

import shutil

import pytest

from aistack.embedding import EmbedderError, bundled


def test_an_altered_model_file_is_refused(tmp_path):
    sources = bundled.bundled_sources()
    bundled.verify(sources)  # the installed files pass
    copy = tmp_path / "tokenizer.json"
    shutil.copy(sources["tokenizer.json"], copy)
    with copy.open("ab") as file:
        file.write(b" ")
    with pytest.raises(EmbedderError, match=r"has sha256 .* expected be50c362"):
        bundled.verify({**sources, "tokenizer.json": copy})


def test_a_missing_model_file_is_refused(tmp_path):
    sources = bundled.bundled_sources()
    with pytest.raises(EmbedderError, match="model file missing"):
        bundled.verify({**sources, "model.onnx": tmp_path / "model.onnx"})
