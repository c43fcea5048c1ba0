from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from a3c.shared import segment_creator, torch_segments
from a3c.shared_optim import SharedAdam, SharedRMSprop


def _params(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 3, generator=generator), torch.randn(7, generator=generator)]


def _grads(step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(5, 3, generator=generator), torch.randn(7, generator=generator)]


def _shared_and_torch(kind: str, shared: list[torch.Tensor], reference: list[torch.nn.Parameter]):
    if kind == "adam":
        ours = SharedAdam(shared, lr=1e-2, eps=1e-8)
        return ours, torch.optim.Adam(reference, lr=1e-2, eps=1e-8, fused=ours.fused)
    ours = SharedRMSprop(shared, lr=1e-2, alpha=0.99, eps=1e-5)
    return ours, torch.optim.RMSprop(reference, lr=1e-2, alpha=0.99, eps=1e-5, foreach=False)


@pytest.mark.parametrize("kind", ["adam", "rmsprop"])
def test_matches_torch_optimizer_exactly(kind):
    reference = [torch.nn.Parameter(p) for p in _params()]
    shared = [p.clone().share_memory_() for p in _params()]
    ours, theirs = _shared_and_torch(kind, shared, reference)
    for step in range(6):
        grads = _grads(step)
        for p, g in zip(reference, grads, strict=True):
            p.grad = g.clone()
        theirs.step()
        ours.step(grads)
        for mine, expected in zip(shared, reference, strict=True):
            assert torch.equal(mine, expected.detach())
    their_state, my_state = theirs.state_dict()["state"], ours.state_dict()["state"]
    for i in range(2):
        assert set(my_state[i]) == set(their_state[i]) == {"step", *ours.state_names}
        assert float(my_state[i]["step"]) == float(their_state[i]["step"]) == 6
        for name in ours.state_names:
            assert torch.equal(my_state[i][name], their_state[i][name])
    # The snapshot loads into torch's own optimizer: the same format.
    _, fresh = _shared_and_torch(kind, [p.clone().share_memory_() for p in _params()],
                                 [torch.nn.Parameter(p) for p in _params()])
    fresh.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("kind", [SharedAdam, SharedRMSprop])
def test_state_is_shared_and_stays_shared_after_loading(kind):
    params = [p.share_memory_() for p in _params()]
    optimizer = kind(params)
    assert all(t.is_shared() for t in optimizer.tensors())
    optimizer.step(_grads(0))
    saved = optimizer.state_dict()
    other = kind([p.clone().share_memory_() for p in _params()])
    before = [t.data_ptr() for t in other.tensors()]
    other.load_state_dict(saved)
    assert [t.data_ptr() for t in other.tensors()] == before  # loaded in place
    assert all(t.is_shared() for t in other.tensors())
    assert float(other.steps[0]) == 1.0
    for name in kind.state_names:
        assert torch.equal(other.state[name][1], optimizer.state[name][1])


def test_state_of_another_optimizer_is_refused():
    adam = SharedAdam([p.share_memory_() for p in _params()])
    adam.step(_grads(0))
    rmsprop = SharedRMSprop([p.clone().share_memory_() for p in _params()])
    with pytest.raises(ValueError, match="saved by another optimizer"):
        rmsprop.load_state_dict(adam.state_dict())


def test_forget_faster_raises_the_decay_rates():
    adam = SharedAdam([p.share_memory_() for p in _params()], betas=(0.9, 0.999))
    adam.forget_faster(2)  # one of two nodes steps every other update
    assert adam.betas == pytest.approx((0.81, 0.999 ** 2))
    rmsprop = SharedRMSprop([p.share_memory_() for p in _params()], alpha=0.99)
    rmsprop.forget_faster(3)
    assert rmsprop.alpha == pytest.approx(0.99 ** 3)


def _step_in_child(optimizer: SharedAdam, grads: list[torch.Tensor]) -> None:
    optimizer.step(grads)


@pytest.mark.slow
def test_step_in_child_process_is_visible_in_parent():
    params = [p.share_memory_() for p in _params()]
    optimizer = SharedAdam(params, lr=0.1)
    before = [p.clone() for p in params]
    process = mp.get_context("spawn").Process(target=_step_in_child, args=(optimizer, _grads(0)))
    process.start()
    process.join(timeout=120)
    assert process.exitcode == 0
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
    assert float(optimizer.steps[0]) == 1.0
    assert float(optimizer.state["exp_avg_sq"][0].abs().sum()) > 0


def _step_until_stopped(shared, seed: int) -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(seed)
    grad = torch.zeros_like(shared.params)
    while not shared.stop_requested():
        grad.normal_(generator=generator)
        shared.optimizer.step([grad], lr=1e-3)


@pytest.mark.slow
def test_no_phantom_non_finite_weights_while_workers_step():
    # The trainer stops a run whose shared weights are non-finite. Checked on the live tensor while
    # processes stepped Adam, torch.isfinite (x == x) saw values change between its two reads and
    # reported non-finite weights that never were: CI runs stopped with exit 1 for nothing.
    from a3c.config import Config
    from a3c.model import build_model
    from a3c.shared import STOP, SharedTraining

    config = Config(env_id="CartPole-v1", workers=2)
    shared = SharedTraining.create(build_model(config, (4,), 2), config)
    context = mp.get_context("spawn")
    steppers = [context.Process(target=_step_until_stopped, args=(shared, seed)) for seed in range(2)]
    for process in steppers:
        process.start()
    try:
        while float(shared.optimizer.steps[0]) < 1000:  # both have started stepping by now, or soon
            assert all(p.is_alive() for p in steppers)
        steps_before = float(shared.optimizer.steps[0])
        phantom = sum(not shared.weights_are_finite() for _ in range(100_000))
        steps_during = float(shared.optimizer.steps[0]) - steps_before
    finally:
        shared.set_flag(STOP)
        for process in steppers:
            process.join(timeout=60)
    assert steps_during > 5_000  # the checks really raced with the updates
    assert phantom == 0
    assert bool(torch.isfinite(shared.params).all())


def test_a_segment_s_creator_is_read_from_torch_s_name():
    assert segment_creator("torch_1234_567_0") == 1234  # torch_<pid>_<random>_<counter>
    assert segment_creator("psm_0a1b") is None and segment_creator("torch_shm") is None
    assert isinstance(torch_segments(), set)
