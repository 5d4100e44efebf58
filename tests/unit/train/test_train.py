"""Training-lane pieces that need no cluster: params, presets, schedule, capacity check, export ids."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from raylane.artifacts.tokenizer import special_token_ids
from raylane.errors import ConfigError
from raylane.train.loop import lr_factor
from raylane.train.params import TrainParams
from raylane.train.presets import llama_config
from raylane.train.run import check_capacity


def test_schedule_warms_up_then_decays_to_the_floor():
    factors = [lr_factor(s, warmup=10, total=100, floor=0.1) for s in range(100)]
    assert factors[:10] == [pytest.approx((s + 1) / 10) for s in range(10)]
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))  # never rises again
    assert factors[-1] == pytest.approx(0.1)


def test_params_reject_unknown_presets_and_long_warmups():
    with pytest.raises(ValidationError, match="unknown preset 'huge'"):
        TrainParams(dataset="corpus", preset="huge")
    with pytest.raises(ValidationError, match="warmup_steps"):
        TrainParams(dataset="corpus", steps=10, warmup_steps=10)


def test_presets_follow_the_tokenizer():
    config = llama_config("small", vocab_size=5000, max_positions=1024, special_ids={"eos_token_id": 7})
    assert (config.vocab_size, config.max_position_embeddings, config.eos_token_id) == (5000, 2048, 7)
    assert config.num_hidden_layers == 6 and config.tie_word_embeddings
    with pytest.raises(ConfigError, match="unknown preset"):
        llama_config("nope", vocab_size=10, max_positions=8)


def test_capacity_check_keeps_cpus_for_ray_data():
    check_capacity(TrainParams(dataset="c", workers=2, cpus_per_worker=0.5), cluster_cpus=2)
    with pytest.raises(ConfigError, match="at most 0.50"):
        check_capacity(TrainParams(dataset="c", workers=2, cpus_per_worker=0.75), cluster_cpus=2)
    with pytest.raises(ConfigError, match="leave Ray Data's read tasks none"):
        check_capacity(TrainParams(dataset="c", workers=2, cpus_per_worker=1), cluster_cpus=2)
    # The train lane's quota: one 0.5-CPU worker and a 0.25-CPU read fit in 0.75, two do not.
    check_capacity(TrainParams(dataset="c", workers=1, cpus_per_worker=0.5), cluster_cpus=4, lane_cpus=0.75)
    with pytest.raises(ConfigError, match="lanes.train.cpus"):
        check_capacity(
            TrainParams(dataset="c", workers=2, cpus_per_worker=0.5), cluster_cpus=4, lane_cpus=0.75
        )


def test_special_ids_come_from_the_chatml_tokens():
    tokenizer = (
        '{"added_tokens": [{"id": 0, "content": "<|endoftext|>"}, {"id": 1, "content": "<|im_start|>"},'
        ' {"id": 2, "content": "<|im_end|>"}, {"id": 3, "content": "<|pad|>"}]}'
    )
    assert special_token_ids(tokenizer) == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
