"""Where an answer ends: the special token that closes the assistant turn of a chat template.

A student fine-tuned on a chat template learns to end its answer with the template's turn end
(`<|eot_id|>` for Llama-3, `<|im_end|>` for ChatML/Qwen-2.5, `<end_of_turn>` for Gemma), not with
its base tokenizer's EOS. Unless generation stops there too, every answer runs on to max_tokens
and invents further turns. The export writes it as the model's EOS (training.run), and every
engine adds it to the ids it stops on, so a base model evaluated by name with a configured
template stops there as well.
"""

from __future__ import annotations

import logging
from typing import Any

from core.errors import ConfigError

log = logging.getLogger(__name__)

# An answer no template rewrites (no surrounding whitespace to trim, no markup).
_ANSWER = "Zq7xAnswer"


def _is_special(tokenizer: Any, token_id: int) -> bool:
    if token_id == tokenizer.unk_token_id:  # text the vocabulary lacks, not a marker
        return False
    if token_id in set(tokenizer.all_special_ids):
        return True
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return bool(getattr(added.get(token_id), "special", False))


def _closing_text(tokenizer: Any, chat_template: str | None) -> str:
    """What the template writes after the assistant's answer in a one-turn conversation."""
    user = [{"role": "user", "content": "Hello"}]
    kw: dict[str, Any] = {"tokenize": False}
    if chat_template:
        kw["chat_template"] = chat_template
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, **kw)
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": _ANSWER}], add_generation_prompt=False, **kw
    )
    # The answer as the template renders it after the generation prompt, as training encodes it.
    at = full.find(_ANSWER, len(prompt)) if full.startswith(prompt) else full.rfind(_ANSWER)
    if at < 0:
        raise ConfigError(
            "the chat template does not render the assistant's answer "
            f"(with the answer it renders {full[-160:]!r}), so where an answer ends cannot be "
            "read from it; set train.chat_template / model.chat_template to a template that "
            "renders a user turn, then the assistant's"
        )
    return full[at + len(_ANSWER) :]


def turn_end_token(tokenizer: Any, chat_template: str | None = None) -> tuple[str, int]:
    """(token, id) of the special token that closes the assistant turn in `chat_template` (else
    the tokenizer's own): the one-turn conversation is rendered with and without an answer, and
    the first special token after the answer is taken. A template that closes the turn with no
    special token leaves a trained model no token to stop on: that is an error."""
    if not (chat_template or getattr(tokenizer, "chat_template", None)):
        raise ConfigError(
            "the tokenizer has no chat template, so no turn end to stop on; set "
            "train.chat_template / model.chat_template to a Jinja template"
        )
    closing = _closing_text(tokenizer, chat_template)
    ids = tokenizer(closing, add_special_tokens=False)["input_ids"] if closing else []
    for token_id in ids:
        if _is_special(tokenizer, token_id):
            return tokenizer.convert_ids_to_tokens(token_id), int(token_id)
    raise ConfigError(
        f"the chat template closes the assistant turn with {closing!r}, which holds no special "
        "token: a model trained on it has no token to end its answer with, and generation would "
        "run to max_tokens. Use a template whose assistant turn ends with a special token of the "
        "tokenizer (e.g. ChatML's <|im_end|>, Llama-3's <|eot_id|>, Gemma's <end_of_turn>) in "
        "train.chat_template / model.chat_template"
    )


def eos_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """The EOS ids a model already stops on: its generation config's, then its tokenizer's."""
    ids = getattr(generation_config, "eos_token_id", None) if generation_config else None
    out = list(ids) if isinstance(ids, (list, tuple)) else [] if ids is None else [ids]
    if tokenizer.eos_token_id is not None:
        out.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(int(i) for i in out))


def stop_token_ids(tokenizer: Any, chat_template: str | None = None) -> list[int]:
    """What an engine stops on beside the model's EOS: the turn end of the template its chats
    are rendered with (empty when there is no template, or it closes with no special token:
    then the model's EOS is all there is, as before, with a warning)."""
    if not (chat_template or getattr(tokenizer, "chat_template", None)):
        return []
    try:
        return [turn_end_token(tokenizer, chat_template)[1]]
    except ConfigError as e:
        log.warning("generation stops on the model's EOS only: %s", e)
        return []
    except Exception as e:  # a tokenizer wrapper that renders no HF template (vLLM's mistral
        # mode), a template that fails to render: the extra stop is lost, the engine still runs
        log.warning(
            "generation stops on the model's EOS only: the turn end could not be read (%s: %s)",
            type(e).__name__,
            e,
        )
        return []


def turn_end_text(chat_template: str) -> str:
    """What closes an assistant turn in `chat_template`, read off the template alone (no
    tokenizer: placeholder BOS/EOS, "eos" where the template writes the EOS): the protocol
    table's record of each student's stop (reporting.protocol), which `turn_end_token` finds as
    a token id wherever the tokenizer is at hand."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(chat_template).render(
        messages=[{"role": "user", "content": "UUU"}, {"role": "assistant", "content": "AAA"}],
        bos_token="<BOS>",
        eos_token="<EOS>",
        add_generation_prompt=False,
    )
    after = text.split("AAA", 1)[1].strip()
    end = after.split()[0] if after else ""
    return "eos" if end == "<EOS>" else end
