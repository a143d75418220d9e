-- Kubernetes login: a projected-token-shaped JWT reviewed by the bench TokenReview endpoint.
wrk.method = "POST"
wrk.path = "/v1/auth/kubernetes/login"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"role":"bench","jwt":"' .. os.getenv("BENCH_JWT") .. '"}'
