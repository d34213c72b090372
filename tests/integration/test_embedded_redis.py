import os

from common.config import RedisConfig
from common.embedded_redis import ensure_redis, redis_reachable
from common.net import free_port


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_unreachable_loopback_url_gets_an_embedded_redis(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert not redis_reachable(url)
    used, server = ensure_redis(RedisConfig(url=url), tmp_path)
    try:
        assert server is not None and used != url and redis_reachable(used)
        assert (tmp_path / "redis").is_dir()
    finally:
        server.stop()
    assert not redis_reachable(used) and not pid_alive(server.proc.pid)


def test_reachable_url_is_used_as_is(redis_url, tmp_path):
    assert ensure_redis(RedisConfig(url=redis_url), tmp_path) == (redis_url, None)


def test_remote_unreachable_url_is_an_error_not_an_embedded_server(tmp_path):
    import pytest

    from common.embedded_redis import RedisUnavailable

    with pytest.raises(RedisUnavailable, match="not reachable"):
        ensure_redis(
            RedisConfig(url="redis://redis.invalid:6379/0", socket_timeout_s=0.2), tmp_path
        )
