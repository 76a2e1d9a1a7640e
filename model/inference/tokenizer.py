"""Text tokenizer: the checkpoint's `tokenizer.json` run by the `tokenizers` library, with BOS/EOS handled the way
transformers' Llama tokenizer (which OmniGen uses) handles them; and a small tokenizer built locally for tests and
tiny models (no downloads)."""
from __future__ import annotations

import json
from pathlib import Path

from x2i.core.errors import X2IError

# Special tokens of the prompt template; the tiny tokenizer keeps each of them whole, as Phi-3's does.
TEMPLATE_TOKENS = ["<|user|>", "<|end|>", "<|assistant|>", "<|endoftext|>"]


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


class TextTokenizer:
    """`encode(text) -> ids`, adding BOS/EOS per the checkpoint's tokenizer_config.json."""

    def __init__(self, tokenizer, bos_id: int | None = None, eos_id: int | None = None, manual_specials: bool = True):
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer
        self.bos_id, self.eos_id = bos_id, eos_id
        # Llama-style configs say whether to add BOS/EOS; transformers then replaces tokenizer.json's
        # post-processor with exactly that, so we add them ourselves and skip the post-processor.
        self.manual_specials = manual_specials

    def encode(self, text: str) -> list[int]:
        if not self.manual_specials:
            return list(self.tokenizer.encode(text, add_special_tokens=True).ids)
        ids = list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return ([self.bos_id] if self.bos_id is not None else []) + ids + ([self.eos_id] if self.eos_id is not None else [])

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, directory: str | Path) -> TextTokenizer:
        from tokenizers import Tokenizer

        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise X2IError(f"tokenizer file tokenizer.json not found in {directory} (a sentencepiece-only "
                           "tokenizer.model is not supported: save the tokenizer with a tokenizer.json)")
        tokenizer = Tokenizer.from_file(str(path))
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        specials_path = directory / "special_tokens_map.json"
        specials = json.loads(specials_path.read_text()) if specials_path.is_file() else {}
        llama_style = "add_bos_token" in config or "llama" in str(config.get("tokenizer_class", "")).lower()
        if not llama_style:
            return cls(tokenizer, manual_specials=False)

        def special_id(name: str, add: bool) -> int | None:
            if not add:
                return None
            text = _token_text(config.get(name)) or _token_text(specials.get(name)) or {"bos_token": "<s>",
                                                                                        "eos_token": "</s>"}[name]
            token_id = tokenizer.token_to_id(text)
            if token_id is None:
                raise X2IError(f"{config_path}: {name} {text!r} is not in the tokenizer's vocabulary")
            return token_id

        return cls(tokenizer, bos_id=special_id("bos_token", config.get("add_bos_token", True)),
                   eos_id=special_id("eos_token", config.get("add_eos_token", False)))


_TINY_CORPUS = [
    "Generate an image according to the following instructions",
    "a red circle on a blue background", "a green square next to a yellow triangle", "a purple star",
    "The cat is in <img>. A cat sleeps on a sofa.", "</img> Make the umbrella red.",
    "low quality, jpeg artifacts, ugly, duplicate, blurry, bad anatomy, bad proportions, extra limbs",
    "Detect the skeleton of human in this image: <img></img>", "Find the lamp in the picture and color it blue.",
    "small large big tiny left right top bottom centre center above below with and of the a an in on",
    "<|diffusion|>", "0123456789 .,:;!?'\"()[]-_/",
]


SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", *TEMPLATE_TOKENS]


def train_bpe_tokenizer(corpus: list[str], directory: str | Path, vocab_size: int) -> TextTokenizer:
    """Train a byte-level BPE (deterministic for a given corpus) and save it as tokenizer.json +
    tokenizer_config.json + special_tokens_map.json in `directory`. Any text tokenizes (byte fallback)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    # The post-processor adds BOS like the config says, so a plain PreTrainedTokenizerFast reading these files
    # (diffusers' pipeline, in the benchmark) produces the same ids as TextTokenizer.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "add_eos_token": False,
              "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
              "model_max_length": 131072}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}, indent=2))
    return TextTokenizer.from_dir(directory)


def build_tiny_tokenizer(directory: str | Path, vocab_size: int = 400) -> TextTokenizer:
    """A small BPE trained on a fixed corpus: the tokenizer of tests and fresh tiny models."""
    return train_bpe_tokenizer(_TINY_CORPUS * 4, directory, vocab_size)
