-- KV v2 write: every request a new version of one of 64 keys (max_versions prunes old ones).
local counter = 0
wrk.method = "POST"
wrk.headers["X-Vault-Token"] = os.getenv("BENCH_TOKEN")
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local path = "/v1/secret/data/bench/write-" .. (counter % 64)
  local body = '{"data":{"password":"value-' .. counter .. '","user":"app"}}'
  return wrk.format(nil, path, nil, body)
end
