-- One AdmissionReview (BENCH_BODY_FILE, the deployment-pod fixture) POSTed to /mutate.
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.path = "/mutate"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
