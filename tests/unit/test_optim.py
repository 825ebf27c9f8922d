"""AdamW as every loop builds it: the betas / eps options and the fused / multi-tensor implementations."""

import pytest
import torch

from rlhfkit.config import ConfigError, load_config
from rlhfkit.train.optim import OptimConfig, adamw_implementation, build_optimizer, optimizer_and_schedule
from rlhfkit.train.sft import SFTConfig


def _train(implementation: str, steps: int = 5, **kw) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    optimizer = build_optimizer(model.parameters(), lr=1e-2, weight_decay=0.1, implementation=implementation, **kw)
    data = torch.randn(steps, 8, 16)
    for x in data:
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("implementation", ["foreach", "fused", "auto"])
def test_fused_and_foreach_adamw_take_the_same_steps_as_the_single_tensor_loop(implementation):
    # the same arithmetic per element, batched over the parameters (foreach) or in one kernel per parameter
    # (fused) instead of looped: a difference is float32 rounding of a reordered expression, about 1 ulp of a
    # weight of size ~0.3 per step (≈ 3e-8), so after 5 steps they agree far inside 1e-6, while the steps
    # themselves (lr 1e-2, Adam's steps are ~lr each) move the weights by ~5e-2
    single, other = _train("single"), _train(implementation)
    start = _train("single", steps=0)
    for a, b, s in zip(single, other, start):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
        assert (a - s).abs().max() > 1e-3  # the parameters did move: the comparison is not of two no-ops


def test_adamw_keeps_the_loop_on_cpu_unless_asked():
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    assert adamw_implementation(params) == {"foreach": False}  # auto on a CPU: the default numbers stay bit-exact
    assert adamw_implementation(params, "single") == {"foreach": False}
    assert adamw_implementation(params, "foreach") == {"foreach": True}
    assert adamw_implementation(params, "fused") == {"fused": True}
    opt, _ = optimizer_and_schedule(params, OptimConfig(adam_implementation="fused"), total_steps=1)
    assert opt.defaults["fused"] is True
    with pytest.raises(ValueError, match="auto, fused, foreach, single"):
        adamw_implementation(params, "fast")


def test_foreach_is_bit_exact_with_the_loop_on_cpu():
    # the reason auto could use foreach without moving any number, had it been faster (it is not, on a CPU)
    for a, b in zip(_train("single"), _train("foreach")):
        assert torch.equal(a, b)


def test_adam_betas_and_eps_reach_the_optimizer_and_default_to_the_old_constants():
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    opt, _ = optimizer_and_schedule(params, OptimConfig(), total_steps=10)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8  # unchanged defaults
    opt, _ = optimizer_and_schedule(params, OptimConfig(adam_betas=[0.8, 0.999], adam_eps=1e-6), total_steps=10)
    assert opt.defaults["betas"] == (0.8, 0.999) and opt.defaults["eps"] == 1e-6
    # β2 shows from the second step (Adam's first step is lr·g/(|g| + eps) whatever β2 is)
    a, b = _train("auto", steps=2), _train("auto", steps=2, betas=(0.9, 0.999))
    assert not torch.allclose(a[0], b[0])


def test_bad_adam_settings_are_config_errors():
    config = load_config(SFTConfig, None, ["model=m", "data=d", "optim.adam_betas=[0.9,0.999]", "optim.adam_eps=1e-6"])
    assert config.optim.adam_betas == [0.9, 0.999] and config.optim.adam_eps == 1e-6
    with pytest.raises(ConfigError, match="adam_betas"):
        load_config(SFTConfig, None, ["model=m", "data=d", "optim.adam_betas=[0.9]"])
    with pytest.raises(ConfigError, match="adam_eps"):
        load_config(SFTConfig, None, ["model=m", "data=d", "optim.adam_eps=0"])
    with pytest.raises(ConfigError, match="adam_implementation"):
        load_config(SFTConfig, None, ["model=m", "data=d", "optim.adam_implementation=fast"])
