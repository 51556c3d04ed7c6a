"""Tokenizer (HF `tokenizers`), the model's chat template (jinja2), and
incremental detokenization for streaming."""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from common.errors import BadRequestError


class Tokenizer:
    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        self._tok = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        cfg_path = model_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        template = cfg.get("chat_template")
        jinja = model_dir / "chat_template.jinja"
        if not template and jinja.is_file():
            template = jinja.read_text()
        self.bos_token = _token_str(cfg.get("bos_token"))
        self.eos_token = _token_str(cfg.get("eos_token"))
        self.template_source = template or ""
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(template) if template else None
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    @property
    def pre_tokenizer(self):
        """The HF pre-tokenizer (`pre_tokenize_str(text)` -> [(piece, (start, end))]), None when it has none."""
        return self._tok.pre_tokenizer

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def renders_tools(self) -> bool:
        """Whether the chat template itself renders `tools` and assistant `tool_calls`."""
        return "tools" in self.template_source and "tool_calls" in self.template_source

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        if self._template is None:
            raise BadRequestError("this model has no chat template; use /v1/completions or /generate")
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token, **kwargs)
        except (TemplateError, TypeError, ValueError) as exc:  # messages the template cannot render: the caller's
            raise BadRequestError(f"chat template: {exc}", param="messages") from None


def _token_str(tok) -> str:
    if isinstance(tok, dict):
        return tok.get("content", "")
    return tok or ""


def _raise(message: str):
    raise BadRequestError(f"chat template: {message}")


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without re-decoding
    everything each step; holds back bytes of an unfinished UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.prefix_offset = 0
        self.read_offset = 0

    def step(self, ids: list[int]) -> str:
        prefix_text = self.tok.decode(ids[self.prefix_offset:self.read_offset], self.skip)
        new_text = self.tok.decode(ids[self.prefix_offset:], self.skip)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(ids)
            return delta
        return ""
