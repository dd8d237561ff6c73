"""Random run configs: every invalid one gets a one-line ConfigError, never a traceback."""

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from multifcl.config import FIELD_TYPES, ConfigError, ExperimentConfig
from multifcl.config_names import check_names

KEYS = [name.replace("_", "-") for name in FIELD_TYPES]
VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
RUN_CONFIGS = st.dictionaries(
    st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=12)), VALUES, max_size=6
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RUN_CONFIGS)
@example({"data-root": "a\x00b"})
@example({"output-dir": "\x00"})
@example({"lr": float("inf")})
@example({"temperature": float("nan")})
@example({"\n": False})
def test_any_run_config_is_accepted_or_refused_in_one_line(run_config):
    try:
        config = check_names(ExperimentConfig.from_run_config(run_config))
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message and message.startswith("run config key ")
    else:  # accepted: every number in it is finite
        assert all(math.isfinite(v) for v in vars(config).values() if isinstance(v, float))
