-- Fills a server for bench/scale.sh: BENCH_FILL = secrets | policies | tokens, BENCH_COUNT of
-- them, spread over BENCH_THREADS wrk threads (thread i writes items i, i + threads, ...). Secret n is
-- secret/scale/f<n / 10000>/k<n % 10000> (folders of 10,000). A thread that has sent its share
-- touches BENCH_DONE_DIR/thread-<id> and asks sys/health from then on; bench/scale.sh stops wrk
-- when every thread is done, then writes what the API does not list (wrk drops a request or
-- two at start and stop).
local kind = os.getenv("BENCH_FILL")
local count = tonumber(os.getenv("BENCH_COUNT"))
local step = tonumber(os.getenv("BENCH_THREADS"))
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end
local sent = 0
wrk.headers["X-Vault-Token"] = os.getenv("BENCH_TOKEN")
wrk.headers["Content-Type"] = "application/json"
request = function()
  local n = id + sent * step
  sent = sent + 1
  if n >= count then
    if not done then
      done = true
      io.open(os.getenv("BENCH_DONE_DIR") .. "/thread-" .. id, "w"):close()
    end
    return wrk.format("GET", "/v1/sys/health")
  elseif kind == "secrets" then
    return wrk.format("POST", string.format("/v1/secret/data/scale/f%d/k%d", math.floor(n / 10000), n % 10000),
      nil, string.format('{"data":{"password":"value-%d","user":"app"}}', n))
  elseif kind == "policies" then
    return wrk.format("PUT", "/v1/sys/policies/acl/scale-" .. n, nil,
      string.format('{"policy":"path \\"secret/data/team-%d/*\\" { capabilities = [\\"read\\"] }"}', n))
  else
    return wrk.format("POST", "/v1/auth/token/create", nil, '{"policies":["scale"],"ttl":"24h"}')
  end
end
response = function(status, headers, body)
  if status >= 300 and status ~= 429 then
    io.stderr:write("fill: HTTP " .. status .. " " .. body .. "\n")
  end
end
