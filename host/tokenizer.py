"""The tokenizer of a local checkpoint folder, for generation with text (galaxy-generate --prompt,
galaxy-serve --tokenizer). Never downloaded: Hugging Face runs offline here."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from galaxy.runtime.errors import UsageError


@dataclass(frozen=True)
class Tokenizer:
    hf: Any  # a transformers tokenizer

    @classmethod
    def load(cls, folder: str) -> "Tokenizer":
        """UsageError naming the folder and what it lacks when there is no tokenizer in it."""
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoTokenizer

        try:
            return cls(AutoTokenizer.from_pretrained(folder, local_files_only=True))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--tokenizer {folder}: no tokenizer there ({str(exc).splitlines()[0]}); give a local "
                             "checkpoint folder with tokenizer.json or its tokenizer files") from exc

    def encode(self, text: str) -> list[int]:
        return list(self.hf(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids)
