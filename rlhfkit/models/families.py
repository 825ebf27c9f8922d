"""Tiny random-init models of real families, with each family's tokenizer conventions, offline.

``create_tiny_family(family, texts, out_dir)`` trains a small byte-level BPE on ``texts``, builds
the family's config (2 layers, hidden 32) and saves an ordinary Hugging Face folder. The weights
are random; what is faithful is what trips RLHF code up when it meets these families:

=========  ==========================  =================  =====================  =========  ===================
family     positions                   BOS                EOS                    pad        chat template
=========  ==========================  =================  =====================  =========  ===================
gpt2       learned absolute, tied      = EOS, not added   <|endoftext|>          none       none
qwen2      RoPE, GQA                   none               <|im_end|>             <|endoftext|>  ChatML
gemma      RoPE, MQA, tied             <bos>, added       <eos> (turns end with  <pad>      writes {{ bos_token }}
                                                          <end_of_turn>)                    (double-BOS trap)
llama3     RoPE, GQA                   <|begin_of_text|>  <|eot_id|>             none       header template, writes
                                       added                                                {{ bos_token }}
mistral    RoPE, sliding window 16     <s>, added         </s>                   none       [INST] ... [/INST]
=========  ==========================  =================  =====================  =========  ===================

The tokenizers are byte-level BPE for every family (the real Llama-2/Mistral/Gemma ones are
SentencePiece): the special tokens, which ones the tokenizer adds and what the template writes are
the conventions that matter to the trainers, not how plain words are split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FAMILIES = ("gpt2", "qwen2", "gemma", "llama3", "mistral")


@dataclass(frozen=True)
class TokenizerConventions:
    specials: tuple[str, ...]
    """special tokens, in id order (the first ids of the vocabulary)"""
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    add_bos: bool
    """the tokenizer prepends BOS to every encoded text (add_special_tokens=True)"""
    chat_template: str | None
    extra_stop: tuple[str, ...] = ()
    """more stop tokens in generation_config.json (Gemma's <end_of_turn>)"""


CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('only user and assistant roles are supported') }}{% endif %}"
    "{% endfor %}"
)

CONVENTIONS = {
    "gpt2": TokenizerConventions(specials=("<|endoftext|>",), bos="<|endoftext|>", eos="<|endoftext|>", pad=None,
                                 unk="<|endoftext|>", add_bos=False, chat_template=None),
    "qwen2": TokenizerConventions(specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"), bos=None,
                                  eos="<|im_end|>", pad="<|endoftext|>", unk=None, add_bos=False,
                                  chat_template=CHATML),
    "gemma": TokenizerConventions(specials=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                                  bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True,
                                  chat_template=GEMMA_TEMPLATE, extra_stop=("<end_of_turn>",)),
    "llama3": TokenizerConventions(specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                             "<|end_header_id|>", "<|eot_id|>"),
                                   bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, unk=None, add_bos=True,
                                   chat_template=LLAMA3_TEMPLATE),
    "mistral": TokenizerConventions(specials=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"), bos="<s>", eos="</s>",
                                    pad=None, unk="<unk>", add_bos=True, chat_template=MISTRAL_TEMPLATE),
}


def family_tokenizer(family: str, texts: list[str], *, vocab_size: int = 300):
    """A byte-level BPE trained on ``texts`` with the special tokens and conventions of ``family``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    conv = CONVENTIONS[_check(family)]
    core = Tokenizer(models.BPE(unk_token=conv.unk))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(conv.specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    if conv.add_bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{conv.bos} $A", pair=f"{conv.bos} $A {conv.bos} $B",
            special_tokens=[(conv.bos, core.token_to_id(conv.bos))])
    else:
        core.post_processor = processors.ByteLevel(trim_offsets=False)
    names = {"bos_token": conv.bos, "eos_token": conv.eos, "pad_token": conv.pad, "unk_token": conv.unk}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **{k: v for k, v in names.items() if v is not None})
    if conv.chat_template is not None:
        tokenizer.chat_template = conv.chat_template
    return tokenizer


def family_config(family: str, tokenizer, *, hidden_size: int = 32, num_hidden_layers: int = 2,
                  max_position_embeddings: int = 128):
    """The family's transformers config, tiny (2 heads of 16 for hidden 32)."""
    import transformers

    heads, head_dim = 2, hidden_size // 2
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=num_hidden_layers, num_attention_heads=heads,
                  max_position_embeddings=max_position_embeddings, **ids)
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=hidden_size, n_layer=num_hidden_layers,
                                       n_head=heads, n_positions=max_position_embeddings, **ids)
    if family == "qwen2":
        return transformers.Qwen2Config(num_key_value_heads=1, tie_word_embeddings=False, **common)
    if family == "gemma":
        return transformers.GemmaConfig(num_key_value_heads=1, head_dim=head_dim, **common)
    if family == "llama3":
        return transformers.LlamaConfig(num_key_value_heads=1, rope_theta=500000.0, tie_word_embeddings=False,
                                        **common)
    return transformers.MistralConfig(num_key_value_heads=1, head_dim=head_dim, sliding_window=16,
                                      tie_word_embeddings=False, **common)


def create_tiny_family(family: str, texts: list[str], out_dir: str | Path, *, vocab_size: int = 300,
                       hidden_size: int = 32, seed: int = 0) -> Path:
    """Train the family's tokenizer on ``texts``, initialise a tiny model of that family, save both
    (with a generation_config.json holding the family's stop tokens) as an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = family_tokenizer(family, texts, vocab_size=vocab_size)
    config = family_config(family, tokenizer, hidden_size=hidden_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    conv = CONVENTIONS[family]
    stops = [tokenizer.eos_token_id] + [tokenizer.convert_tokens_to_ids(t) for t in conv.extra_stop]
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=stops if len(stops) > 1 else stops[0],
                                               pad_token_id=tokenizer.pad_token_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _check(family: str) -> str:
    if family not in CONVENTIONS:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    return family
