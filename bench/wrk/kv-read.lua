-- KV v2 read with a policy-limited token.
wrk.method = "GET"
wrk.path = "/v1/secret/data/bench/app"
wrk.headers["X-Vault-Token"] = os.getenv("BENCH_TOKEN")
