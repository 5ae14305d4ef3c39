"""Probe: how length-aware does SFT alone make the demo's tiny model? (issue 6 experiments)

Builds the length-control data (paragraph length range --pmin..--pmax), a char tokenizer
and a tiny Llama, runs the ordinary SFT stage, then decodes --n-eval test prompts greedily
and prints one JSON line: steps, SFT seconds, eval loss, mean score, the correlation of
answer length with the limit, the median relative length error and the share of answers
that end with "。". The README's SFT-probe table was made with:

    python experiments/lc_sft_probe.py w1 --pmin 40 --pmax 160 --n-sft 6000 --epochs 2 --lr 3e-3 --heads 8 --kv 4 --max-length 288
    python experiments/lc_sft_probe.py w2 --pmin 30 --pmax 120 --n-sft 8000 --epochs 2 --lr 3e-3 --heads 8 --kv 4 --batch 8 --max-length 256
    python experiments/lc_sft_probe.py w4 --pmin 30 --pmax 120 --n-sft 8000 --epochs 2 --lr 6e-3 --heads 8 --kv 4 --batch 8 --max-length 256
    python experiments/lc_sft_probe.py w5 --pmin 30 --pmax 120 --n-sft 8000 --epochs 2 --lr 3e-3 --heads 8 --kv 4 --batch 4 --max-length 256
    python experiments/lc_sft_probe.py w3 --pmin 30 --pmax 120 --n-sft 12000 --epochs 2 --lr 3e-3 --heads 8 --kv 4 --batch 8 --max-length 256
    python experiments/lc_sft_probe.py w6 --pmin 30 --pmax 120 --n-sft 24000 --epochs 1 --lr 3e-3 --heads 8 --kv 4 --batch 8 --max-length 256
    python experiments/lc_sft_probe.py w7 --pmin 30 --pmax 120 --n-sft 12000 --epochs 2 --lr 3e-3 --heads 8 --kv 4 --batch 8 --max-length 256 --train-on-prompt

Output goes to /tmp/lc_probe/NAME (--root to change).
"""
import argparse, json, time, logging
from pathlib import Path
import numpy as np
p = argparse.ArgumentParser()
p.add_argument("name"); p.add_argument("--sep", default="", help="text appended to every prompt")
p.add_argument("--pmin", type=int, default=60); p.add_argument("--pmax", type=int, default=200)
p.add_argument("--n-sft", type=int, default=3000); p.add_argument("--epochs", type=int, default=4)
p.add_argument("--lr", type=float, default=2e-3); p.add_argument("--heads", type=int, default=4)
p.add_argument("--kv", type=int, default=2); p.add_argument("--layers", type=int, default=4)
p.add_argument("--hidden", type=int, default=128); p.add_argument("--ffn", type=int, default=352)
p.add_argument("--noise", type=float, default=0.23); p.add_argument("--batch", type=int, default=16)
p.add_argument("--max-length", type=int, default=336); p.add_argument("--n-eval", type=int, default=100)
p.add_argument("--limit-step", type=int, default=5)
p.add_argument("--no-count-tokens", action="store_true", help="limits as single digits, like any number")
p.add_argument("--train-on-prompt", action="store_true"); p.add_argument("--max-steps", type=int, default=0); p.add_argument("--root", default="/tmp/lc_probe")
a = p.parse_args()
logging.basicConfig(level=logging.WARNING)
from jaxrlhf.tasks.length_control import build_length_control_data
if a.no_count_tokens:
    import jaxrlhf.tasks.length_control.tokenizer as lc_tok
    lc_tok.COUNT_PATTERN = r"[\s\S]"; lc_tok.count_merges = lambda: []
from jaxrlhf.stages.demo import DemoConfig, DemoModelConfig, build_base_model, stage_configs, _texts
from jaxrlhf.config import from_dict, to_dict
from jaxrlhf.stages.sft import run_sft, SFTConfig
from jaxrlhf.tasks.length_control.evaluate import evaluate_length_control
out = Path(a.root) / a.name
t0 = time.time()
data = build_length_control_data(out / "data", seed=0, n_sft=a.n_sft, n_rm=10, n_test=260, n_ppo_prompts=10, sft_noise=a.noise, limit_step=a.limit_step,
                                  paragraph_chars=(a.pmin, a.pmax))
data = {k: v for k, v in data.items()}
if a.sep:
    for name in ("sft", "test"):
        rows = [json.loads(l) for l in data[name].read_text().splitlines()]
        for r in rows: r["prompt"] += a.sep
        data[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
lens = [len(json.loads(l)["prompt"]) + len(json.loads(l)["response"]) for l in data["sft"].read_text().splitlines()]
print("sft seq chars mean", np.mean(lens), "max", max(lens), flush=True)
cfg = DemoConfig(output_dir=str(out), max_length=a.max_length,
                 model=DemoModelConfig(hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                                       num_attention_heads=a.heads, num_key_value_heads=a.kv))
build_base_model(cfg, out, _texts(data))
sft = stage_configs(cfg, out, data)["sft"]
d = to_dict(sft); d["train"]["epochs"] = a.epochs; d["train"]["batch_size"] = a.batch
d["train"]["optim"]["learning_rate"] = a.lr; d["train"]["max_steps"] = a.max_steps; d["data"]["train_on_prompt"] = a.train_on_prompt; d["train"]["eval_every"] = 100000
sft = from_dict(SFTConfig, d)
t1 = time.time()
res = run_sft(sft)
t2 = time.time()
test = out / "test_sub.jsonl"
test.write_text("".join(data["test"].read_text().splitlines(True)[:a.n_eval]))
r = evaluate_length_control(out / "sft" / "final", test, out / "pred.jsonl", max_prompt_length=a.max_length)
rows = [json.loads(l) for l in (out / "pred.jsonl").read_text().splitlines()]
L = np.array([x["limit"] for x in rows]); n = np.array([x["chars"] for x in rows])
fin = np.mean([x["response"].endswith("。") for x in rows])
print(json.dumps({"name": a.name, "steps": res["steps"], "sft_s": round(t2 - t1), "eval_loss": round(res["eval"]["loss"], 3),
                  "score": r["mean_score"], "corr": round(float(np.corrcoef(L, n)[0, 1]), 3),
                  "med_rel_err": round(float(np.median(np.abs(n / L - 1))), 3), "ends_period": round(float(fin), 2),
                  "dist": r["distribution"]}), flush=True)
for x in rows[:6]: print(x["limit"], x["chars"], repr(x["response"][:90]))
