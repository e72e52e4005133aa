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


async def test_a_query_costs_at_most_the_256_word_pieces_the_model_was_trained_on(embedder):
    # all-MiniLM-L6-v2 was trained on 256 word pieces and sentence-transformers truncates
    # there; past them, text changes nothing but the cost (attention grows with the
    # square of the length). Two texts that agree on their first 200 words embed alike.
    prefix = " ".join(["firewall"] * 200)  # 400 word pieces: past 256, short of 512
    first = await embedder.embed_query(prefix + " and then something about nginx")
    second = await embedder.embed_query(prefix + " but this ending is about PostgreSQL")
    assert first == second
    # A short text is not truncated: its ending matters.
    short = await embedder.embed_query("firewall nginx")
    other = await embedder.embed_query("firewall postgresql")
    assert short != other
