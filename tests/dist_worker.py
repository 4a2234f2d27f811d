"""Run by tests/test_distributed.py under torchrun (2 CPU processes, gloo): the data-parallel and sharded cases.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py GEN CLIP OUT

Each case writes what the test compares with one process into OUT (rank 0 only; rank 1 writes its own
`rank1_*` files where it matters). `trainer_case` is also called in one process by the test itself.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ipl import generators  # noqa: E402
from ipl.core import distributed as cdist  # noqa: E402
from ipl.core.errors import IPLError  # noqa: E402

SOURCE_TEXT, TARGET_TEXT = "a solid shape", "a striped shape"


def trainer_case(gen: str, clip: str, batch: int, batch_prompt: int, data_parallel: bool) -> dict:
    """Stage 1 (2 iterations) and stage 2 (3 steps, a layer pick broadcast at steps 1 and 3) with global batches
    `batch_prompt` / `batch`; returns the learners, G_s, G_t, G_ema and the logged terms."""
    from ipl.method.clip import load_clips
    from ipl.method.stage1 import train_prompts
    from ipl.method.stage2 import Stage2Settings, Stage2Trainer

    torch.manual_seed(0)
    source = generators.load_adaptable(gen, device="cpu")
    clips = load_clips([clip], device="cpu")
    s1 = train_prompts(source, clips, SOURCE_TEXT, TARGET_TEXT, iters=2, batch=batch_prompt, lr=0.05, n_ctx=2,
                       seed=0, progress=False, noise="fixed", data_parallel=data_parallel)
    settings = Stage2Settings(method="ipl", iters=3, batch=batch, lr=0.01, ema_decay=0.5, layers=1, layer_batch=2,
                              layer_every=2, noise="fixed", seed=0, truncation=1.0, data_parallel=data_parallel)
    trainer = Stage2Trainer(source, clips, SOURCE_TEXT, TARGET_TEXT, s1.learners, settings)
    rendered: list[int] = []  # latents per G_t training render: this rank's share of the batch
    render = trainer.G_t.render
    trainer.G_t.render = lambda w: (rendered.append(int(w.shape[0])), render(w))[1]
    records = [trainer.step() for _ in range(3)]
    return {"learners": [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in s1.learners],
            "stage1_loss": [r["loss"] for r in s1.history],
            "G_s": {k: v.detach().clone() for k, v in trainer.G_s.state_dict().items()},
            "G_t": {k: v.detach().clone() for k, v in trainer.G_t.state_dict().items()},
            "G_ema": {k: v.detach().clone() for k, v in trainer.G_ema.state_dict().items()},
            "stage2": [{k: r[k] for k in ("total", "dir_0", "layers")} for r in records], "rendered": rendered}


def adapt_args(gen: str, clip: str, out: Path, *extra: str) -> list[str]:
    """A tiny `ipl adapt` (IPL, 2 stage-1 and 4 stage-2 iterations, checkpoints every 2)."""
    return ["adapt", "--source", gen, "--clip", clip, "--source-text", SOURCE_TEXT, "--target", TARGET_TEXT,
            "--iters-prompt", "2", "--batch-prompt", "4", "--n-ctx", "2", "--iters", "4", "--batch", "2",
            "--lr", "0.01", "--layers", "1", "--layer-batch", "2", "--layer-every", "2", "--checkpoint-every", "2",
            "--sample-every", "0", "--sample-n", "2", "--noise", "fixed", "--device", "cpu", "--quiet",
            "--out", str(out), *extra]


def eval_args(clip: str, run: Path, out: Path) -> list[str]:
    """`ipl eval RUN` of 10 samples in batches of 3 (4 batches), CLIP score with the tiny CLIP's saved weights."""
    weights = Path(clip.rsplit(":", 1)[0]).parent / "clip.safetensors"  # the same weights in every process
    return ["eval", str(run), "--n", "10", "--batch", "3", "--metrics", "clip-score", "--clip",
            f"{clip.rsplit(':', 1)[0]}:{weights}", "--offline", "--device", "cpu", "--quiet", "--out", str(out)]


def cli(args: list[str]) -> int:
    """`ipl ARGS` in this process (the console entry point); its exit status."""
    from ipl.commands.cli import main

    sys.argv = ["ipl", *args]
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def main() -> None:
    gen, clip, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    from ipl.distributed import check_same, init_from_env

    launch = init_from_env("cpu")
    assert launch is not None and launch.world_size == 2 and launch.backend == "gloo", launch
    rank = launch.rank
    status: dict = {}

    # 1. Stage 1 and 2, data-parallel: per-rank batches 2 and 1 (global 4 and 2).
    result = trainer_case(gen, clip, batch=2, batch_prompt=4, data_parallel=True)
    torch.save(result, out / f"trainer_rank{rank}.pt")

    # 2. Different settings on one rank: every rank refuses, naming the ranks.
    try:
        check_same({"batch": 2 + rank}, "adapt settings")
        status["mismatch"] = None
    except IPLError as e:
        status["mismatch"] = str(e)

    # 3. `ipl adapt --data-parallel`: a whole run; the same run interrupted after stage-2 step 3 (the checkpoint
    # holds step 2) and resumed.
    status["full"] = cli(adapt_args(gen, clip, out / "dp_full", "--data-parallel"))
    from ipl.method.stage2 import Stage2Trainer

    step = Stage2Trainer.step

    def interrupted(self):
        if self.iteration == 3:
            raise KeyboardInterrupt
        return step(self)

    Stage2Trainer.step = interrupted
    status["interrupted"] = cli(adapt_args(gen, clip, out / "dp_resumed", "--data-parallel"))
    Stage2Trainer.step = step
    status["resumed"] = cli(adapt_args(gen, clip, out / "dp_resumed", "--data-parallel", "--resume"))

    # 4. `ipl eval` sharded over the two ranks (4 batches of 3, 3, 3, 1 samples).
    status["eval"] = cli(eval_args(clip, out / "dp_full", out / "eval_sharded.json"))
    cdist.barrier()
    (out / f"status_rank{rank}.json").write_text(json.dumps(status))


if __name__ == "__main__":
    main()
