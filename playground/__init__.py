"""What the playground (app.py) does, by concern. The modules imported here are free of gradio, so tests and
benchmarks use them directly; the views with their handlers (`playground.views`) and the core the handlers share
(`playground.service`) import gradio and turn the `ValueError`s raised here into `gr.Error` messages.

    caps         what one request may ask for
    models       models by name, loaded once; the device; memory
    settings     a request's settings, as /generate's parameters, checked; share links; a model's own settings
    detokenizer  the text each token adds, token by token
    runs         generations as token ids, streamed
    branches     what-if branches from a kept KV cache; a visitor's tree of runs
    numbers      the numbers the views draw, a module each: timeline, draws, beam_tree, rounds, alpha_sweep, metrics
    render       the HTML of the text, a step, the branches
    panels       the strategies' own drawings: the beam tree, speculative rounds, contrastive search and decoding
    layer_panels the layer view (each layer's guess at a step) and DoLa's candidate layers in the step view
    lessons      each strategy's explanation and the share links that show its characteristic behaviour
    sessions     who is asking, the fair share, what each visitor holds (fine-tuned copy, KV caches)
    finetune     a visitor's fine-tune in a worker thread
"""

from . import (branches, finetune, layer_panels, lessons, models, numbers, panels, render, runs, sessions,  # noqa: F401
               settings)
from .caps import *  # noqa: F401,F403
from .finetune import FineTune, finetune_setup, model_zip, read_upload  # noqa: F401
from .models import (DEFAULT_AMATEUR, DEFAULT_DRAFT, DEFAULT_MODEL, HUB_EXAMPLES, HUB_MODELS, OOM_MESSAGE,  # noqa: F401
                     ROOT, HubModel, hub_dtype, smallest_sibling,
                     ModelCache, OutOfMemoryError, check_hub_size, default_draft, free_memory, freeze_heap,
                     limit_malloc_arenas, model_path, pick_device)
from .render import (prob_colour, show_token, stage_numbers, step_html, step_table, tokens_html)  # noqa: F401
from .branches import Tree, branch  # noqa: F401
from .detokenizer import Detokenizer, token_pieces  # noqa: F401
from .numbers.alpha_sweep import alpha_sweep  # noqa: F401
from .numbers.beam_tree import beam_tree  # noqa: F401
from .numbers.draws import draw  # noqa: F401
from .numbers.rounds import speculative_rounds  # noqa: F401
from .numbers.timeline import timeline  # noqa: F401
from .runs import Run, encode_prompt, stream_text  # noqa: F401
from .sessions import (ClassShare, FairShare, KVStore, Sessions, address_key, env_number,  # noqa: F401
                       forwarded_client, trusted_proxies, visitor)
from .settings import (Settings, check_prompt, from_generation_config, from_query, number,  # noqa: F401
                       settings_from_dict, to_query)  # noqa: F401
