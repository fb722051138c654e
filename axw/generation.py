"""The decoding run behind `AutoregressiveWrapper.generate`, `stream` and
`beam_search`: the strategy the settings choose, stepping a `Run`.

prompt ids -> `GenerationConfig` (checked once) -> prefill once -> per step:
`decode_one_token` through the KV cache -> logits -> the processor pipeline
-> the strategy chooses -> ids. What the strategies share is in `runtime`;
each strategy is a function of the run in a module of its own (`sampling`,
`beam_search`, `contrastive_search`, `speculative`, `dola`); streaming and the
teaching trace are by-products of their loops.
"""

from __future__ import annotations

from typing import Callable, Iterator

from . import beam_search, contrastive_search, dola, sampling, speculative
from .runtime import (  # noqa: F401  (the names generation has always offered)
    INT_DTYPES,
    STRATEGIES,
    GenerateOutput,
    ModelRunner,
    Run,
    Step,
    as_net,
    decode_one_token,
    prefill,
    prepare_prompts,
    sample,
    window,
)

# each strategy's steps, by the name `Run.strategy` holds
STEPS: dict[str, Callable[[Run], Iterator[Step]]] = {
    "sample": sampling.steps,
    "beam": beam_search.steps,
    "contrastive": contrastive_search.steps,
    "speculative": speculative.steps,
    "dola": dola.steps,
}


class Decoding(Run):
    """One generation run, stepped by the strategy its settings chose: steps
    yielded by iteration, the full output from `output()` (and `result()`)
    afterwards."""

    def __iter__(self) -> Iterator[Step]:
        try:
            yield from STEPS[self.strategy](self)
        finally:  # ended, stopped or dropped: forwards shared with other runs (axw.shared) stop waiting for it
            self.leave_shared()
