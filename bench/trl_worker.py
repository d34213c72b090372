"""TRL's GRPOTrainer on the same tiny model and task (run by bench/vs_trl.py inside the TRL
venv, never imported by luffy-async). Prints one JSON line with the timing.

    <trl-venv>/bin/python bench/trl_worker.py MODEL_DIR TRAIN.jsonl STEPS PROMPTS GROUP MAX_TOKENS
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# bench/verifier.py would shadow the repo's verifier package (run as a script, bench/ is first)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main() -> None:
    model_dir, train, steps, prompts, group, max_tokens = sys.argv[1:7]
    steps, prompts, group, max_tokens = int(steps), int(prompts), int(group), int(max_tokens)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from verifier.rewards import math_reward

    with open(train) as fh:
        rows = [json.loads(line) for line in fh][: steps * prompts]
    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
            for r in rows
        ]
    )

    def reward(completions, answer, **_):
        return [
            math_reward(c[0]["content"], a, True).reward
            for c, a in zip(completions, answer, strict=True)
        ]

    class Clock(TrainerCallback):
        first = last = 0.0

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            Clock.first = Clock.first or now
            Clock.last = now

    cfg = GRPOConfig(
        output_dir="/tmp/trl-bench",
        max_steps=steps,
        per_device_train_batch_size=prompts * group,
        gradient_accumulation_steps=1,
        num_generations=group,
        max_completion_length=max_tokens,
        learning_rate=1e-3,
        beta=0.0,
        temperature=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        loss_type="dr_grpo",
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(
        model=model,
        args=cfg,
        reward_funcs=reward,
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[Clock()],
    )
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    lengths = [
        h["completions/mean_length"]
        for h in trainer.state.log_history
        if "completions/mean_length" in h
    ]
    steady = Clock.last - Clock.first  # steps 2..N: start-up and the first step excluded
    print(
        json.dumps(
            {
                "steps": steps,
                "samples": steps * prompts * group,
                "wall_s": total,
                "steady_s": steady,
                "samples_per_s": (steps - 1) * prompts * group / steady,
                "torch_threads": torch.get_num_threads(),
                "completion_len_mean": sum(lengths) / max(1, len(lengths)),
            }
        )
    )


if __name__ == "__main__":
    main()
