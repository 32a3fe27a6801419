"""The WebUI's sampler names and the diffusers schedulers that correspond to them (data, one table).

The WebUI (≥ 1.9) names a sampler and, separately, a "Schedule type"; older names such as
"DPM++ 2M Karras" fold the schedule into the sampler name. Both forms are accepted.
Equivalences follow the diffusers documentation's WebUI/k-diffusion table.
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass, field

from ..errors import RecipeError, suggest


@dataclass(frozen=True)
class SamplerSpec:
    scheduler: str  # diffusers class name
    options: dict = field(default_factory=dict)
    needs: str | None = None  # an optional module the scheduler imports when it runs


SAMPLERS: dict[str, SamplerSpec] = {
    "Euler": SamplerSpec("EulerDiscreteScheduler"),
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "Heun": SamplerSpec("HeunDiscreteScheduler"),
    "LMS": SamplerSpec("LMSDiscreteScheduler", needs="scipy"),
    "DPM2": SamplerSpec("KDPM2DiscreteScheduler"),
    "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler"),
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": SamplerSpec("DPMSolverSDEScheduler", needs="torchsde"),
    "DPM++ 3M SDE": SamplerSpec("DPMSolverMultistepScheduler",
                                {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "UniPC": SamplerSpec("UniPCMultistepScheduler"),
    "DEIS": SamplerSpec("DEISMultistepScheduler"),
    "DDIM": SamplerSpec("DDIMScheduler", {"set_alpha_to_one": False}),
    "PLMS": SamplerSpec("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False}),
    "LCM": SamplerSpec("LCMScheduler"),
}

# "Schedule type" → scheduler options (schedulers that do not know an option ignore it).
SCHEDULE_TYPES: dict[str, dict] = {
    "Automatic": {},
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
}

# The noise schedule every SD1/SD2/SDXL checkpoint was trained with.
BASE_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "steps_offset": 1, "timestep_spacing": "leading", "clip_sample": False,
}


def available() -> list[str]:
    """Sampler names usable here (the old "<name> Karras" forms are accepted too, not listed)."""
    return [n for n, s in SAMPLERS.items() if s.needs is None or importlib.util.find_spec(s.needs) is not None]


def resolve(sampler: str, schedule: str = "Automatic") -> tuple[SamplerSpec, dict]:
    """(spec, options) for a WebUI sampler name and schedule type."""
    name, sched = sampler.strip(), (schedule or "Automatic").strip()
    for suffix in ("Karras", "Exponential"):
        if name.endswith(" " + suffix) and name[: -len(suffix) - 1] in SAMPLERS:
            name, sched = name[: -len(suffix) - 1], suffix
    if name not in SAMPLERS:
        raise RecipeError(f"Unknown sampler {sampler!r}.", suggest(sampler, SAMPLERS) or
                          f"Known: {', '.join(SAMPLERS)}")
    if sched not in SCHEDULE_TYPES:
        raise RecipeError(f"Unknown schedule type {schedule!r}.", f"Known: {', '.join(SCHEDULE_TYPES)}")
    spec = SAMPLERS[name]
    return spec, {**spec.options, **SCHEDULE_TYPES[sched]}


def make_scheduler(sampler: str, schedule: str = "Automatic", prediction_type: str = "epsilon"):
    """A fresh diffusers scheduler object for ``sampler``."""
    import diffusers

    spec, options = resolve(sampler, schedule)
    cls = getattr(diffusers, spec.scheduler)
    config = {**BASE_CONFIG, "prediction_type": prediction_type, **options}
    known = set(inspect.signature(cls.__init__).parameters)
    return cls.from_config({k: v for k, v in config.items() if k in known})
