-- Child token creation by a token allowed to create them.
wrk.method = "POST"
wrk.path = "/v1/auth/token/create"
wrk.headers["X-Vault-Token"] = os.getenv("BENCH_TOKEN")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"policies":["bench"],"ttl":"10m"}'
