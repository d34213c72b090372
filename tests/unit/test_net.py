"""Addresses: what a service publishes for peers, what counts as loopback, masked URLs, and the
learner's node layout."""

import pytest

from common.config import ConfigError, load_config
from common.net import advertised_host, is_loopback, redact_url, redis_host, route_address


def test_loopback_and_wildcards():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("::")


def test_the_advertised_address_is_never_a_wildcard():
    url = "redis://127.0.0.1:6379/0"
    assert advertised_host("10.1.2.3", None, url) == "10.1.2.3"  # bound to one: that one
    assert advertised_host("0.0.0.0", "pod.example", url) == "pod.example"  # told: as told
    # a wildcard: our own address on the route to Redis (here loopback, as Redis is)
    assert advertised_host("0.0.0.0", None, url) == "127.0.0.1"
    assert route_address("127.0.0.1") == "127.0.0.1"


def test_redis_urls():
    assert redis_host("redis://:pw@redis.svc:6380/1") == ("redis.svc", 6380)
    assert redis_host("redis://redis") == ("redis", 6379)
    assert redact_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact_url("redis://user:s3cret@redis/0") == "redis://user:***@redis/0"
    assert redact_url("redis://redis:6379/0") == "redis://redis:6379/0"


def test_passwords_stay_out_of_the_resolved_config():
    cfg = load_config(
        overrides=["--redis.url", "redis://:s3cret@h:1/0", "--redis.password", "also-secret"],
        environ={"LUFFY_SERVICES__TOKEN": "tok"},
    )
    text = str(cfg.to_toml_dict())
    assert "s3cret" not in text and "also-secret" not in text and "tok'" not in text
    assert cfg.redis.password.get_secret_value() == "also-secret"


def test_learner_nodes_are_numbered_below_their_count():
    cfg = load_config(overrides=["--learner.nnodes", "2", "--learner.node_rank", "1"], environ={})
    assert (cfg.learner.nnodes, cfg.learner.node_rank) == (2, 1)
    with pytest.raises(ConfigError, match=r"node_rank 2 is not below learner\.nnodes 2"):
        load_config(overrides=["--learner.nnodes", "2", "--learner.node_rank", "2"], environ={})
