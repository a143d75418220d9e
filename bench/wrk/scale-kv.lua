-- KV v2 reads (BENCH_OP=read) or writes (BENCH_OP=write) of random keys among the BENCH_COUNT
-- secrets bench/scale.sh wrote (secret/scale/f<n / 10000>/k<n % 10000>).
local count = tonumber(os.getenv("BENCH_COUNT"))
local write = os.getenv("BENCH_OP") == "write"
wrk.headers["X-Vault-Token"] = os.getenv("BENCH_TOKEN")
wrk.headers["Content-Type"] = "application/json"
local seed = 0
function setup(thread)
  seed = seed + 1
  thread:set("seed", seed)
end
function init(args)
  math.randomseed(os.time() * 16 + seed)
end
request = function()
  local n = math.random(0, count - 1)
  local path = string.format("/v1/secret/data/scale/f%d/k%d", math.floor(n / 10000), n % 10000)
  if write then
    return wrk.format("POST", path, nil, string.format('{"data":{"password":"new-%d","user":"app"}}', n))
  end
  return wrk.format("GET", path)
end
