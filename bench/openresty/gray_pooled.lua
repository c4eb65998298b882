-- The seed's gray_deploy.lua (seed 000, section 2.3.3) written the way a competent OpenResty user
-- would: the same decision (X-Real-IP, else X-Forwarded-For, else the peer; GET <ip> == <ip> in
-- Redis -> @gray, else @base), but with a pooled Redis connection (cosocket + setkeepalive) and a
-- short timeout instead of a connect per request. A few lines of RESP instead of lua-resty-redis,
-- which Debian does not package; the wire traffic is the same one GET per request.
local ip = ngx.var.http_x_real_ip or ngx.var.http_x_forwarded_for or ngx.var.remote_addr

local sock = ngx.socket.tcp()
sock:settimeouts(20, 20, 20)
local ok = sock:connect("127.0.0.1", tonumber(ngx.var.redis_port))
local gray = false
if ok then
  local sent = sock:send({ "*2\r\n$3\r\nGET\r\n$", #ip, "\r\n", ip, "\r\n" })
  local line = sent and sock:receive("*l")
  if line and line:byte(1) == 36 then -- '$'
    local n = tonumber(line:sub(2))
    if n and n >= 0 then
      local value = sock:receive(n + 2)
      gray = value ~= nil and value:sub(1, n) == ip
    end
    sock:setkeepalive(60000, 256)
  else
    sock:close()
  end
end

if gray then
  return ngx.exec("@gray")
end
return ngx.exec("@base")
