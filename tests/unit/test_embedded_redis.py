def test_redis_fixture_is_a_real_server_with_aof(redis_client):
    info = redis_client.info("persistence")
    assert info["aof_enabled"] == 1
    assert redis_client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
