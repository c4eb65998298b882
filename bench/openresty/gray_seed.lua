-- The seed's gray_deploy.lua (seed 000, section 2.3.3) as written: a new Redis connection for every
-- request (its timeout 60 s), never returned to a pool. Only the client library differs: a few
-- lines of RESP instead of lua-resty-redis, which Debian does not package.
local local_ip = ngx.req.get_headers()["X-Real-IP"]
if local_ip == nil then
  local_ip = ngx.req.get_headers()["x_forwarded_for"]
end
if local_ip == nil then
  local_ip = ngx.var.remote_addr
end

local cache = ngx.socket.tcp()
cache:settimeout(60000)
local ok, err = cache:connect("127.0.0.1", tonumber(ngx.var.redis_port))
if not ok then
  ngx.say("failed to connect:", err)
  return
end

local intercept
cache:send({ "*2\r\n$3\r\nGET\r\n$", #local_ip, "\r\n", local_ip, "\r\n" })
local line = cache:receive("*l")
if line and line:byte(1) == 36 then
  local n = tonumber(line:sub(2))
  if n and n >= 0 then
    local value = cache:receive(n + 2)
    intercept = value and value:sub(1, n)
  end
end

if intercept == local_ip then
  ngx.exec("@gray")
  return
end

ngx.exec("@base")
