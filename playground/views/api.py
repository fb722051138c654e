"""The API tab: the named endpoints, how to call them, the caps."""

from __future__ import annotations

import gradio as gr

from axw.specs import FILTER_SPECS

from ..caps import (MAX_BATCH_SIZE, MAX_BEAMS, MAX_DRAFT_TOKENS, MAX_FINETUNE_STEPS, MAX_HUB_MODEL_BYTES,
                    MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_TREE_SAMPLES, MAX_UPLOAD_BYTES, STRATEGIES)

FILTERS_OFF = ", ".join(f"`{f.name}` ({'false' if f.kind is bool else f'{f.off:g}'})" for f in FILTER_SPECS)
API_DOC = f"""Everything the Generate and Fine-tune tabs do is also a named API endpoint; every parameter but the
first has a default.

```python
from gradio_client import Client

client = Client("http://127.0.0.1:7860")          # or "owner/space-name" on Hugging Face Spaces
text, tokens, trace = client.predict(prompt="ROMEO:", api_name="/generate")
text, *_ = client.predict(prompt="ROMEO:", strategy="beam search", beams=4, max_new_tokens=40,
                          api_name="/generate")
text, *_ = client.predict(prompt="ROMEO:", temperature=2.0, min_p=0.1, sampler_order="temperature_first",
                          api_name="/generate")
text, *_ = client.predict(prompt="ROMEO:", strategy="speculative decoding", temperature=0.0,
                          num_assistant_tokens=5, api_name="/generate")   # greedy's text, token for token
# what if step 4 had taken another candidate? the same call, with the token forced there
what_if, *_ = client.predict(prompt="ROMEO:", force_step=4, force_token=trace[3]["candidates"][1],
                             api_name="/generate")
report = client.predict(text=open("my.txt").read(), steps=20, api_name="/finetune")
text, *_ = client.predict(prompt="ROMEO:", use_finetuned=True, api_name="/generate")   # same client
```

**/generate** returns the generated text, each new token as `[text, probability]`, and the per-step trace: per
step the model's top candidates, their probability after each stage, and after each stage the tokens `kept`,
the `mass` of the model's probability they hold and the `entropy` in bits (the timeline's numbers), the chosen
token with its rank and probability; beam search's `beam_tree` (every candidate expanded), contrastive search's
`contrastive` scores, contrastive decoding's `contrastive_decoding`, speculative decoding's round
(`speculative`). `strategy`: {", ".join(f"`{s}`" for s in STRATEGIES)}.

- Sampling: `temperature` (0 = greedy) and the filters, chained in this order, each off at its neutral value:
  {FILTERS_OFF}; `sampler_order` (`filters_first` or `temperature_first`);
  `xtc_probability` (0 = off), `xtc_threshold`; `mirostat_tau` (0 = off), `mirostat_eta`; `dynatemp_range`
  (0 = off), `dynatemp_exponent`; `seed`.
- Beam search: `beams`, `length_penalty`, `stochastic` (stochastic beams: with the temperature and filters).
- Contrastive search: `penalty_alpha`, `contrastive_k`. Contrastive decoding: `amateur`, `cd_alpha`, `cd_beta`.
- Speculative decoding: `drafter` (`draft model`, `draft model + prompt lookup`, `draft model + datastore`,
  `datastore`: the n-gram datastore beside the draft model, `amateur`, `prompt lookup`), `num_assistant_tokens`,
  `num_assistant_tokens_schedule` (`constant`, `heuristic`), with the sampling settings but XTC and mirostat.
- All: `max_new_tokens`, `repetition_penalty`, `no_repeat_ngram_size`, `dry_multiplier` (0 = off), `dry_base`,
  `dry_allowed_length`, `model` (a Hub repo id; empty = the default model), `use_finetuned`.
- A what-if branch: `force_step` (1-based; 0 = none) and `force_token` (a token id): the same run, with that
  token forced at that step and continued with the same settings and seed.

**/sample_tree** (`prompt`, `n`, `k`, `settings`: a dict of /generate's parameters by name) samples the prompt
`n` times (at most {MAX_TREE_SAMPLES}) with seeds seed..seed+n-1, each text the one /generate gives with its
seed, and returns the prefix tree of their tokens: `nodes` (each with its `parent`, `token`, `text`, `count` of
texts through it, `ends` there, `prob` it was chosen with), the distinct `texts` with their counts, and
`entropy`, in bits, of the first `k` tokens' distribution over the texts.

**/finetune** (`text`, `steps`, `learning_rate`, `batch_size`, `context_length`, `mask_prob`, `seed`) trains
your own copy of the model and returns `{{steps, stopped, loss, losses, val_losses}}` (`val_losses`: the
held-out slice's `[step, loss]` pairs, the last tenth of your text's tokens).

**Chat mode**: `chat=True` (for a model with a chat template) makes `prompt` your message after the system
message `system`, laid out with the model's template; the text ends at any of the model's stop ids.

**Share links** use /generate's names: `?prompt=ROMEO:&strategy=beam+search&beams=3&seed=5` opens the page with
those settings (`force_step` and `force_token` included: Generate then opens that branch).

**Caps**: prompt {MAX_PROMPT_CHARS:,} characters; {MAX_NEW_TOKENS} new tokens; {MAX_BEAMS} beams; {MAX_DRAFT_TOKENS}
draft tokens a round; uploads: UTF-8 `.txt`, {MAX_UPLOAD_BYTES // 1_000_000} MB; fine-tunes: {MAX_FINETUNE_STEPS}
steps, batch {MAX_BATCH_SIZE}; Hub models: {MAX_HUB_MODEL_BYTES // 1_000_000_000} GB of safetensors weights.
"""


def build():
    gr.Markdown(API_DOC)
