"""GPT-2 small's greedy generation, axw beside transformers: benchmarks/hub_generate.py with --shape gpt2.

    python benchmarks/gpt2_generate.py [--tokens 128] [--repeats 10] [--threads 2] [--dtype float32]
"""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv[1:1] = ["--shape", "gpt2"]
    runpy.run_path(str(Path(__file__).with_name("hub_generate.py")), run_name="__main__")
