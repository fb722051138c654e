"""The API tab: the named endpoints, how to call them, the caps."""

from __future__ import annotations

import gradio as gr

from ..caps import (MAX_BATCH_SIZE, MAX_BEAMS, MAX_FINETUNE_STEPS, MAX_HUB_MODEL_BYTES, MAX_NEW_TOKENS,
                    MAX_PROMPT_CHARS, MAX_UPLOAD_BYTES, STRATEGIES)

API_DOC = f"""Everything the Generate and Fine-tune tabs do is also a named API endpoint; every parameter but the
first has a default.

```python
from gradio_client import Client

client = Client("http://127.0.0.1:7860")          # or "owner/space-name" on Hugging Face Spaces
text, tokens, trace = client.predict(prompt="ROMEO:", api_name="/generate")
text, *_ = client.predict(prompt="ROMEO:", strategy="beam search", beams=4, max_new_tokens=40,
                          api_name="/generate")
# what if step 3 had taken another candidate? the prompt, the step, the token id, the same settings
text, tokens, trace = client.predict("ROMEO:", 3, trace[3]["candidates"][1], {{"seed": 0}}, api_name="/branch")
report = client.predict(text=open("my.txt").read(), steps=20, api_name="/finetune")
text, *_ = client.predict(prompt="ROMEO:", use_finetuned=True, api_name="/generate")   # same client
```

**/generate** returns the generated text, each new token as `[text, probability]`, and the per-step trace: per
step the model's top candidates, their probability after each stage, and after each stage the tokens `kept`,
the `mass` of the model's probability they hold and the `entropy` in bits (the timeline's numbers), the chosen
token with its rank and probability. `strategy`: {", ".join(f"`{s}`" for s in STRATEGIES)}. Sampling:
`temperature` (0 = greedy), `top_k`, `top_p`, `min_p`, `top_a` (off at 0, 1, 0, 0; chained in that order),
`seed`. Beam search: `beams`, `length_penalty`. Contrastive search: `penalty_alpha`, `contrastive_k`.
Contrastive decoding: `amateur`, `cd_alpha`, `cd_beta`. All: `max_new_tokens`, `repetition_penalty`,
`no_repeat_ngram_size`, `model` (a Hub repo id; empty = the default model), `use_finetuned`.

**/branch** (`prompt`, `step`, `token`, `settings`; called with these four in order) is the what-if branch: what
/generate with `settings` (a dict of its parameters by name, the others at their defaults) would have given had
it taken token id `token` at `step` (0-based) and gone on with the same settings and seed. It returns the whole
branch like /generate, the forced step's trace row marked `forced`.

**/finetune** (`text`, `steps`, `learning_rate`, `batch_size`, `context_length`, `mask_prob`, `seed`) trains
your own copy of the model and returns `{{steps, stopped, loss, losses}}`.

**Share links** use /generate's names: `?prompt=ROMEO:&strategy=beam+search&beams=3&seed=5` opens the page with
those settings.

**Caps**: prompt {MAX_PROMPT_CHARS:,} characters; {MAX_NEW_TOKENS} new tokens; {MAX_BEAMS} beams;
uploads: UTF-8 `.txt`, {MAX_UPLOAD_BYTES // 1_000_000} MB; fine-tunes: {MAX_FINETUNE_STEPS} steps, batch
{MAX_BATCH_SIZE}; Hub models: {MAX_HUB_MODEL_BYTES // 1_000_000_000} GB of safetensors weights.
"""


def build():
    gr.Markdown(API_DOC)
