"""`jaxrlhf plan` prints one hint line when a program fits none of the listed chips."""

from jaxrlhf.plan import MemoryPlan, fit_hint

GIB = 2**30


def test_no_hint_when_the_smallest_chip_holds_it():
    assert fit_hint([MemoryPlan("PPO iteration", 6 * GIB, 9 * GIB)], logits="full", mesh_shape={"tensor": 1}) is None


def test_hint_names_the_program_its_memory_and_the_levers_not_in_use():
    plans = [MemoryPlan("reward-model step", 2 * GIB, 3 * GIB), MemoryPlan("PPO iteration LoRA r16", 6 * GIB, 102 * GIB)]
    hint = fit_hint(plans, logits="full", mesh_shape={"data": 1, "fsdp": 8, "tensor": 1})
    assert hint.count("\n") == 0 and hint.startswith("hint: PPO iteration LoRA r16 needs 108.0 GiB")
    assert "6.0 GiB arguments, 102.0 GiB temporaries" in hint
    assert "--logits chunked" in hint and "tensor=N" in hint and "--batch" in hint and "more devices" not in hint
    # levers already pulled are not offered again; arguments over the chip ask for more devices
    hint = fit_hint([MemoryPlan("PPO iteration", 33 * GIB, 5 * GIB)], logits="chunked",
                    mesh_shape={"data": 1, "fsdp": 2, "tensor": 4})
    assert "more devices" in hint and "--logits chunked" not in hint and "tensor=N" not in hint
