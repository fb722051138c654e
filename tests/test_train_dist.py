"""The trainer under torchrun, on the CPU with gloo: two ranks train the
weights one process trains with the same command, a checkpoint of either
resumes on the other as an uninterrupted run goes on, each rank reads its
own rows of the global batch, a killed rank leaves a whole checkpoint, and
bad input is refused before any compute.

Ranks are processes started with the environment torchrun gives them
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), forked from a
server that imported torch once."""

import json
import multiprocessing
import os
import runpy
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from conftest import free_port, tiny_model
from safetensors.torch import load_file

from axw import AutoregressiveWrapper
from axw.train import TrainConfig, TrainingStopped, main, read_trainer_state, train

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5


def _context():
    context = multiprocessing.get_context("forkserver")
    # torch only: axw is imported by each rank from the sys.path the test runs with
    context.set_forkserver_preload(["torch", "torch.distributed.fsdp"])
    return context


def _rank(rank: int, world: int, port: int, logs: str, target, args):
    """One rank, as torchrun starts it: its environment, its output in logs/rank{rank}.log."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    log = open(Path(logs) / f"rank{rank}.log", "w")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    torch.set_num_threads(1)
    code, stopped = 0, None
    try:
        target(*args)
    except SystemExit as e:  # as the interpreter does: a message is printed, with code 1
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
        # held until the exit below: its traceback holds the run's objects (the DDP wrapper, the process group's
        # work), whose destructors may wait on a peer that is gone
        stopped = e
    # end the process as torchrun's agent ends a rank whose peer died: at once. Python's own teardown may wait
    # in gloo's destructor on a peer that is gone
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def where(pid: int) -> str:
    """Where process `pid` is (its Python and native stacks, by py-spy where it is installed), for a hang's
    message."""
    import shutil
    import subprocess

    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        return "(py-spy is not installed: no stacks)"
    try:
        out = subprocess.run([spy, "dump", "--native", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
        return out.stdout + out.stderr
    except (OSError, subprocess.SubprocessError) as e:
        return f"(py-spy failed: {e})"


def launch(tmp_path, target, *args, world=2, timeout=120) -> list[tuple[int, str]]:
    """Run `target(*args)` on `world` ranks; (exit code, output) of each."""
    context = _context()
    logs = Path(tempfile.mkdtemp(prefix="logs", dir=tmp_path))
    port = free_port()
    procs = [context.Process(target=_rank, args=(r, world, port, str(logs), target, args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for r, p in enumerate(procs):
        if p.is_alive():
            stack = where(p.pid)
            p.kill()
            pytest.fail(f"rank {r} hung: {[(logs / f'rank{i}.log').read_text() for i in range(world)]}\n{stack}")
    return [(p.exitcode, (logs / f"rank{r}.log").read_text()) for r, p in enumerate(procs)]


def cli(argv: list[str]):
    """`python -m axw.train ARGV` in this process."""
    sys.argv = ["axw.train", *argv]
    warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*found in sys.modules")  # imported above
    runpy.run_module("axw.train", run_name="__main__", alter_sys=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A text file and a small model folder with its tokenizer, for --init."""
    from axw.data import eos_id, train_tokenizer

    folder = tmp_path_factory.mktemp("dist")
    text = (ROOT / "assets/data/tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
    (folder / "data.txt").write_text(text, encoding="utf-8")
    tokenizer = train_tokenizer(text[:18000], 300)
    model = tiny_model(num_tokens=tokenizer.get_vocab_size(), max_seq_len=32, rotary=True)
    model.tokenizer, model.eos_token_id = tokenizer, eos_id(tokenizer)
    model.save_pretrained(folder / "init")
    return folder


def args(setup, out, *extra):
    # masking, clipping and held-out evaluation on; a constant lr after warmup, so that a run of 3 steps
    # resumed to 6 follows the schedule of a run of 6
    return ["--data", str(setup / "data.txt"), "--init", str(setup / "init"), "--out", str(out), "--batch-size", "4",
            "--seq-len", "16", "--warmup-steps", "1", "--lr", "3e-3", "--min-lr", "3e-3", "--mask-prob", "0.2",
            "--grad-clip", "0.5", "--eval-every", "3", "--eval-tokens", "200", "--threads", "1", *extra]


def resume_args(setup, out, *extra):
    return ["--data", str(setup / "data.txt"), "--out", str(out), "--resume", "--threads", "1", *extra]


def assert_same_run(a: Path, b: Path):
    """Two checkpoints hold the same weights, optimizer moments and records, within float summation order."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], rtol=0, atol=TOLERANCE), name
    oa, ob = (load_file(f / "training" / "optimizer.safetensors") for f in (a, b))
    assert oa.keys() == ob.keys()
    for name in oa:
        if not name.startswith("rng."):
            assert torch.allclose(oa[name].float(), ob[name].float(), rtol=0, atol=TOLERANCE), name
    ha, hb = read_trainer_state(a)["history"], read_trainer_state(b)["history"]
    assert [r["step"] for r in ha] == [r["step"] for r in hb]
    for ra, rb in zip(ha, hb):
        # the gradient's norm before clipping checks its scale, which Adam's update would hide
        for key in ("loss", "grad_norm", "heldout_loss"):
            assert ra[key] == pytest.approx(rb[key], rel=TOLERANCE), key


@pytest.fixture(scope="module")
def one_process(setup):
    """Checkpoints of one process after 6 steps and after 3 (the reference runs)."""
    straight, half = setup / "straight", setup / "half"
    main(args(setup, straight, "--steps", "6"))
    main(args(setup, half, "--steps", "3"))
    return straight, half


def test_two_ranks_train_what_one_process_trains_and_one_process_resumes_them(setup, one_process, tmp_path):
    (straight, half), two = one_process, tmp_path / "two"
    # two ranks (DDP), two micro-batches of one row each
    results = launch(tmp_path, cli, args(setup, two, "--steps", "3", "--grad-accum", "2"))
    assert [code for code, _ in results] == [0, 0], results
    assert "2 ranks (DDP, 2 rows each)" in results[0][1] and "done: 3 steps" in results[0][1]
    assert results[1][1].strip() == ""  # rank 0 alone reports
    assert_same_run(half, two)
    assert "x 2 ranks (DDP)" in (two / "README.md").read_text()
    main(resume_args(setup, two, "--steps", "6"))  # a 2-rank checkpoint on one process
    assert_same_run(straight, two)


def test_fsdp_ranks_resume_one_process_as_an_uninterrupted_run(setup, one_process, tmp_path):
    import shutil

    (straight, half), run = one_process, tmp_path / "run"
    shutil.copytree(half, run)
    results = launch(tmp_path, cli, resume_args(setup, run, "--steps", "6", "--fsdp", "--grad-accum", "2"))
    assert [code for code, _ in results] == [0, 0], results
    assert "2 ranks (FSDP" in results[0][1]
    # sharded over the ranks, gathered whole into an ordinary model folder
    assert_same_run(straight, run)
    assert AutoregressiveWrapper.from_pretrained(run).net.token_emb.weight.shape == (300, 32)


def test_two_ranks_build_the_new_model_one_process_builds(setup, tmp_path):
    """No --init: every rank trains the tokenizer and draws the weights from the seed, as one process does."""
    new = ["--data", str(setup / "data.txt"), "--vocab-size", "280", "--dim", "32", "--depth", "1", "--heads", "2",
           "--max-seq-len", "16", "--steps", "2", "--warmup-steps", "1", "--batch-size", "2", "--threads", "1"]
    main([*new, "--out", str(tmp_path / "one")])
    results = launch(tmp_path, cli, [*new, "--out", str(tmp_path / "two")])
    assert [code for code, _ in results] == [0, 0], results
    assert (tmp_path / "one" / "tokenizer.json").read_bytes() == (tmp_path / "two" / "tokenizer.json").read_bytes()
    assert_same_run(tmp_path / "one", tmp_path / "two")


# --- a rank that dies ---


class Recorder(AutoregressiveWrapper):
    """Writes every batch the trainer feeds it to `batches.{rank}.safetensors`."""

    def forward(self, x, **kwargs):
        from safetensors.torch import save_file

        self.batches = getattr(self, "batches", []) + [x.clone()]
        rank = os.environ.get("RANK", "single")
        save_file({str(i): b for i, b in enumerate(self.batches)}, f"{self.folder}/batches.{rank}.safetensors")
        return super().forward(x, **kwargs)


def train_recorded(folder: str, out: str | None, die_at: int | None):
    """Three steps of 4 rows, in 2 micro-batches per rank, recording the
    batches; rank 1 is killed (SIGKILL) at step `die_at`, as rank 0 saves its checkpoint."""
    import signal

    model = Recorder(tiny_model().net)
    model.folder = folder
    ids = torch.arange(3000) % 97

    def callback(record):
        if os.environ.get("RANK") == "1" and record["step"] == die_at:
            os.kill(os.getpid(), signal.SIGKILL)

    config = TrainConfig(steps=3, batch_size=4, grad_accum=2 if out else 1, seq_len=16, warmup_steps=1,
                         checkpoint_every=2, out_dir=out, eval_every=0)
    try:
        train(model, ids[torch.randperm(3000, generator=torch.Generator().manual_seed(0))], None, config,
              callback=callback)
    except TrainingStopped as e:
        print(f"stopped: {e}", flush=True)
        raise SystemExit(3)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("killed")
    out = folder / "ckpt"
    results = launch(folder, train_recorded, str(folder), str(out), 2)
    train_recorded(str(folder), None, None)  # one process, the reference
    return folder, out, results


def test_each_rank_reads_its_rows_of_the_global_batch(killed_run):
    folder, _, _ = killed_run
    single = load_file(folder / "batches.single.safetensors")
    ranks = [load_file(folder / f"batches.{r}.safetensors") for r in range(2)]
    for step in range(2):  # both ranks lived through steps 1 and 2
        whole = single[str(step)]
        assert whole.shape == (4, 17)
        # rank r's two micro-batches are rows 2r and 2r + 1
        for r in range(2):
            for i in range(2):
                assert torch.equal(ranks[r][str(2 * step + i)], whole[2 * r + i:2 * r + i + 1])


def test_a_killed_rank_leaves_a_whole_checkpoint(killed_run):
    folder, out, results = killed_run
    (code0, log0), (code1, _) = results
    assert code1 == -9  # killed
    assert code0 == 3, log0  # stopped with the message, not hung
    assert "rank 0 of 2 stopped after step 2" in log0 and f"{out} (step 2) is whole" in log0
    assert read_trainer_state(out)["step"] == 2
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith("ckpt")) == ["ckpt"]
    model = AutoregressiveWrapper.from_pretrained(out)
    # and it resumes, on one process
    result = train(model, torch.arange(3000) % 97, None,
                   TrainConfig(steps=3, batch_size=4, seq_len=16, warmup_steps=1, eval_every=0), resume=out)
    assert result.step == 3


# --- bad input, before any compute ---


def test_a_batch_the_world_size_does_not_divide_is_refused_on_every_rank(setup, tmp_path):
    out = tmp_path / "m"
    results = launch(tmp_path, cli, args(setup, out, "--steps", "2", "--batch-size", "3"))
    for code, log in results:
        assert code == 1
        assert "batch_size (3) is the global batch: it must be a multiple of the world size (2)" in log
        assert "parameters" not in log  # nothing was loaded or built
    assert not out.exists()


def train_unlike_models():
    """Each rank builds its model from another seed, then asks FSDP to shard it."""
    model = tiny_model(seed=int(os.environ["RANK"]))
    try:
        train(model, torch.arange(300) % 97, None, TrainConfig(steps=1, batch_size=2, seq_len=16, warmup_steps=0),
              fsdp=True)
    except ValueError as e:
        print(f"refused: {e}", flush=True)
        raise SystemExit(3)


def test_fsdp_refuses_ranks_holding_different_weights(tmp_path):
    for code, log in launch(tmp_path, train_unlike_models):
        assert code == 3 and "refused: the ranks hold different weights" in log, log


def test_bad_distributed_and_init_arguments_are_refused(setup, tmp_path):
    out = tmp_path / "m"
    data = ["--data", str(setup / "data.txt"), "--out", str(out)]
    init = ["--init", str(setup / "init")]
    for argv, match in [
        ([*init, "--fsdp"], "fsdp shards the model across the ranks of a process group and there is none"),
        ([*init, "--batch-size", "4", "--grad-accum", "3"], r"multiple of world size x grad_accum \(1 x 3 = 3\)"),
        ([*init, "--dim", "64", "--vocab-size", "512"], "fine-tunes that model as it is.*drop --dim, --vocab-size"),
        ([*init, "--tokenizer", "t.json"], "drop --tokenizer"),
        ([*init, "--resume"], "drop --init"),
        (["--init", str(tmp_path / "missing")], "missing.*not a folder holding a model"),
        (["--init", "no-such-owner/no-such-model"], "not in the local cache"),
        (["--init", str(setup)], "not a model folder"),
    ]:
        with pytest.raises(ValueError, match=match):
            main([*data, *argv])
        assert not out.exists()
    with pytest.raises(ValueError, match="fsdp shards the model"):
        train(tiny_model(), torch.arange(200) % 97, None, TrainConfig(steps=1, warmup_steps=0), fsdp=True)


def test_init_needs_the_models_tokenizer(tmp_path, setup):
    bare = tiny_model().save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        main(["--data", str(setup / "data.txt"), "--out", str(tmp_path / "m"), "--init", str(bare)])
    assert not (tmp_path / "m").exists()


def test_init_fine_tunes_an_imported_family(setup, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(setup / "init" / "tokenizer.json"))
    config = transformers.Qwen3Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=40,
                                      max_position_embeddings=64, head_dim=16, tie_word_embeddings=True,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(config).save_pretrained(tmp_path / "qwen3")
    tokenizer.save(str(tmp_path / "qwen3" / "tokenizer.json"))
    before = AutoregressiveWrapper.from_pretrained(tmp_path / "qwen3")
    out = tmp_path / "tuned"
    result = main(["--data", str(setup / "data.txt"), "--out", str(out), "--init", str(tmp_path / "qwen3"),
                   "--steps", "2", "--warmup-steps", "1", "--batch-size", "2", "--seq-len", "16", "--threads", "1"])
    assert result.step == 2
    tuned = AutoregressiveWrapper.from_pretrained(out)
    assert tuned.net.attn_layers.config == before.net.attn_layers.config  # its own config, kept
    assert tuned.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert not torch.equal(tuned.net.token_emb.weight, before.net.token_emb.weight)
    assert f"Fine-tuned from `{tmp_path / 'qwen3'}`" in (out / "README.md").read_text()
    assert json.loads((out / "training" / "state.json").read_text())["init"] == str(tmp_path / "qwen3")
