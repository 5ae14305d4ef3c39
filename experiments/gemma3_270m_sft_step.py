"""One SFT step (loss, grad, Adam update) on real Gemma 3 270M weights on CPU, bf16 compute and
float32 params, with the plain [B, T, V] loss or the chunked big-vocabulary path.

    python experiments/gemma3_270m_sft_step.py FOLDER --variant chunked   # FOLDER: jaxrlhf.convert output

Prints the compiled program's temporary bytes and arguments (the step's peak is their sum,
outputs being donated), the seconds of a second step, and the process's max RSS.
"""

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrlhf.losses import sft_loss
from jaxrlhf.models import from_pretrained
from jaxrlhf.models.chunked_logits import chunked_sft_loss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--variant", choices=["plain", "chunked"], required=True)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=512)
    args = parser.parse_args()

    model = from_pretrained(args.folder, dtype="bfloat16", param_dtype="float32", remat=True)
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adamw(1e-5)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, model.config.vocab_size, (args.batch, args.seq)), jnp.int32)
    mask = jnp.ones_like(ids)

    def loss_fn(params):
        m = nnx.merge(graphdef, params)
        if args.variant == "plain":
            return sft_loss(m(ids, mask).logits, ids, mask)[0]
        hidden, _ = m.hidden_states(ids, mask)
        return chunked_sft_loss(m.unembed, hidden, ids, mask, chunk_size=args.chunk)[0]

    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state).compile()
    memory = compiled.memory_analysis()
    argument_bytes = sum(x.nbytes for x in jax.tree.leaves((params, opt_state)))
    print(f"{args.variant}: B={args.batch} T={args.seq} temp {memory.temp_size_in_bytes / 2**30:.2f} GiB, "
          f"params+Adam {argument_bytes / 2**30:.2f} GiB, "
          f"compiled peak {(memory.temp_size_in_bytes + argument_bytes) / 2**30:.2f} GiB")
    params, opt_state, loss = compiled(params, opt_state)
    loss.block_until_ready()
    start = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state)
    loss.block_until_ready()
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.variant}: loss {float(loss):.3f}, step {seconds:.1f} s, max RSS {rss:.2f} GiB")


if __name__ == "__main__":
    main()
