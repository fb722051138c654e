"""The numbers the views draw, one module per view, each a pure function of a run or its trace (no gradio, no
HTML: `playground.panels` and `playground.views` draw them).

    timeline      the uncertainty timeline: per step the entropy, the chosen token's probability and rank, the
                  tokens kept
    draws         sample a step N times: the exact probabilities and the counts of N draws
    beam_tree     beam search's tree of every candidate it expanded
    rounds        speculative decoding's rounds of drafts, accepted and rejected
    alpha_sweep   contrastive search's choice at a step as alpha moves
    metrics       Compare's numbers: where a text departs from greedy, how varied it is, how likely
    layers        the layer view (logit lens): what each layer would predict at a step, where the choice formed
"""
