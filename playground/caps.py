"""What one request may ask for, so one visitor cannot hold the machine, and the strategies offered. The caps on
decoding settings are declared with the settings themselves, in `axw.specs`."""

from axw.specs import (ASSISTANT_SCHEDULES, DRAFTERS, FILTER_SPECS, MAX_BEAMS, MAX_CONTRASTIVE_K,  # noqa: F401
                       MAX_DRAFT_TOKENS, MAX_NEW_TOKENS, SAMPLER_ORDERS, STRATEGIES)

MAX_PROMPT_CHARS = 4000
MAX_UPLOAD_BYTES = 2_000_000
MAX_TRAIN_CHARS = 2_000_000
MAX_FINETUNE_STEPS = 500
MAX_BATCH_SIZE = 32
MODEL_CACHE_SIZE = 3
# generations running at once (AXW_CONCURRENCY). Their one-token steps share forwards (AXW_SHARED_FORWARDS), but on a
# 2-core CPU with the bundled model each run's own work per token (its pipeline, trace and text, serialised by
# Python's interpreter lock) costs as much as the forward, and more runs at once only queue for it
# (benchmarks/class_burst.py): raise it where the forward dominates a step (a GPU, a larger model)
CONCURRENCY = 2
# up to this many runs of one model in flight decode on their own (AXW_SHARED_ALONE): on two cores two runs
# overlap one's forward with the other's work between tokens, which one shared forward would serialise
SHARED_ALONE = 2
# with worker processes (AXW_WORKERS), generations running at once per worker: 8 runs over 2 processes, taking turns
# in each, made 3.31x one run, where 8 in one process made 1.19x (benchmarks/processes.py)
RUNS_PER_WORKER = 4
# worker processes a CPU Space gets at most without AXW_WORKERS (one a core: sessions.space_workers)
SPACE_WORKERS_MAX = 8
MAX_HUB_MODEL_BYTES = 2_000_000_000  # a Hub model's safetensors: about 1B parameters in bf16 (AXW_HUB_MODEL_BYTES)
# visitors' fine-tuned copies kept at once (AXW_FINETUNES), and the memory they may hold together
# (AXW_FINETUNE_BYTES): a class of 30 each with a copy of the bundled model (8 MB) fits easily
MAX_SESSIONS = 32
FINETUNE_BYTES = 2_000_000_000
SESSION_IDLE_S = 3600  # a fine-tuned copy unused for an hour is dropped
# each browser session's share of the machine: seconds holding a generation or fine-tuning slot per window
# (AXW_VISITOR_BUDGET_S, AXW_VISITOR_WINDOW_S); everyone behind one address (a school's network) together gets
# ADDRESS_SESSIONS sessions' worth (AXW_ADDRESS_BUDGET_S): with 2 slots that is the whole machine for a class
VISITOR_BUDGET_S = 60.0
VISITOR_WINDOW_S = 120.0
ADDRESS_SESSIONS = 4
MAX_TRUSTED_PROXIES = 16  # proxies in front of the app that append to X-Forwarded-For
TRACE_TOP = 10  # candidates traced per step: the step view's rows, the what-if choices
MAX_FORKS = 16  # what-if branches kept per visitor (the oldest goes first)
KV_STORE_BYTES = 256_000_000  # KV caches kept for branching, all visitors together (least recently used go)
MAX_DRAWS = 100_000  # "sample this step N times"

MAX_COMPARE_COLUMNS = 12

# the filters in the order the UI chains them: x-transformers' four, then the truncation samplers since
FILTERS = [s.name for s in FILTER_SPECS]
LOOKUP_NGRAM = 2  # "draft model + prompt lookup": copy where the text's last 2 tokens occurred before
MAX_TREE_SAMPLES = 200  # "sample the prompt N times": the sample tree's N
SAMPLE_TREE_BATCH = 100  # its rows sampled in one forward a step
MAX_BRANCH_FILE_BYTES = 1_000_000  # a run with its what-if branches as a file
