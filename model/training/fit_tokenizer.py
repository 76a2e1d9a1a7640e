"""A tokenizer fitted to a mix's instructions, for models trained from scratch (`model.tokenizer: fit`).

A fresh model has no tokenizer of its own; the small one in inference/tokenizer.py is fitted to a fixed dozen
sentences, so words outside them cost a token per few bytes (a 44-character shapes caption is 22 tokens, the prompt
template 36). Fitted to the data, the same byte-level BPE makes most words one token: shorter sequences (cheaper
steps) and one embedding per colour or shape word (faster learning). The files are the usual tokenizer.json +
tokenizer_config.json, read by `TextTokenizer.from_dir`, with BOS added like OmniGen's Llama tokenizer.
"""
from __future__ import annotations

from pathlib import Path

from x2i.core import prompt as prompt_format

from ..inference.processor import TEMPLATE_PREFIX, TEMPLATE_SUFFIX
from ..inference.tokenizer import TextTokenizer, train_bpe_tokenizer



def mix_instructions(mix, limit: int = 20000) -> list[str]:
    """Up to `limit` instructions of the mix (every stream in proportion to its weight), in file order."""
    import pyarrow.parquet as pq

    texts: list[str] = []
    for stream in mix.streams:
        want = max(1, round(limit * stream.weight))
        got = 0
        for shard in stream.shards:
            for text in pq.read_table(shard.path, columns=["instruction"]).column("instruction").to_pylist():
                if got >= want:
                    break
                if isinstance(text, str):
                    texts.append(text)
                    got += 1
            if got >= want:
                break
    return texts


def fit_tokenizer(texts: list[str], directory: str | Path, vocab_size: int) -> TextTokenizer:
    """Train a byte-level BPE of at most `vocab_size` tokens on the templated texts; save it in `directory`."""
    # The processor tokenizes text around image placeholders as "<img>" ... "</img>" pieces: train on those.
    corpus = [TEMPLATE_PREFIX + " ".join(p if isinstance(p, str) else "<img></img>"
                                         for p in prompt_format.split(t)) + TEMPLATE_SUFFIX for t in texts]
    return train_bpe_tokenizer(corpus, directory, vocab_size)
