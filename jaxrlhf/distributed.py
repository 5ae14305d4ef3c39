"""Multi-host start-up: ``jax.distributed`` from flags or the environment.

Every process runs the same program (JAX's multi-controller model); each sees its local
devices, and the mesh spans all processes' devices. On TPU VMs and Slurm clusters JAX
finds the coordinator itself; elsewhere pass ``--coordinator HOST:PORT --num-processes N
--process-id I`` (or set JAXRLHF_COORDINATOR / JAXRLHF_NUM_PROCESSES / JAXRLHF_PROCESS_ID).
On CPU the collectives go through gloo, which is how multi-host is tested on one machine.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> bool:
    """Start ``jax.distributed`` when asked to; returns whether it was started.

    Must run before anything touches the JAX backend. ``auto`` lets JAX detect a TPU pod
    or Slurm allocation on its own.
    """
    import jax

    coordinator = coordinator or os.environ.get("JAXRLHF_COORDINATOR")
    if num_processes is None and os.environ.get("JAXRLHF_NUM_PROCESSES"):
        num_processes = int(os.environ["JAXRLHF_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAXRLHF_PROCESS_ID"):
        process_id = int(os.environ["JAXRLHF_PROCESS_ID"])
    if coordinator is None and not auto:
        return False
    if coordinator is not None and (num_processes is None or process_id is None):
        raise ValueError("--coordinator needs --num-processes and --process-id")
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms in ("", "cpu"):
        # CPU hosts exchange data over TCP with gloo (no-op for accelerator collectives)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
