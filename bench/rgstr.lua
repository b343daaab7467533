-- wrk script for the small-request shape (bench/small.py): a @statsig/js-client flush to
-- /v1/rgstr, {"events": [...], "statsigMetadata": {...}}, cross-origin from a web page.
--
--   CLIENT_KEY=client-bench ORIGIN=https://shop.example.com URL_PATH=/statsig/v1/rgstr \
--     wrk -t1 -c64 -d15s --latency -s bench/rgstr.lua http://127.0.0.1:PORT
--
-- Request n of a thread carries ((n - 1) % 5) + 1 events (1, 2, 3, 4, 5, 1, ...: 3 on average,
-- ~1.5 KB), cycling through a custom event, a gate exposure, a page view, an experiment
-- exposure and a purchase, each with the client's user and the page it was logged on. What
-- the SDK puts in the query string (st, sv, t, sid, ec) is there too; the key goes in the
-- statsig-api-key header (the SDK itself puts it in the `k` parameter; the relay takes both).
--
-- Environment:
--   CLIENT_KEY  the source's client key (client-...)
--   ORIGIN      the page's origin, one the source's `cors` allows
--   URL_PATH    request path (default /statsig/v1/rgstr; "/" for Fluent Bit's http input)
-- Event times are taken once, when wrk starts.

local client_key = os.getenv("CLIENT_KEY") or "client-bench"
local origin = os.getenv("ORIGIN") or "https://shop.example.com"
local url_path = os.getenv("URL_PATH") or "/statsig/v1/rgstr"

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

local now_ms = string.format("%d", os.time() * 1000)
local sent = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["statsig-api-key"] = client_key
wrk.headers["Origin"] = origin
wrk.headers["statsig-sdk-type"] = "javascript-client"
wrk.headers["statsig-sdk-version"] = "3.33.0"
wrk.headers["statsig-retry-count"] = "0"

-- %s: the user object; %d: a per-request number. Exposure metadata as the SDK builds it
-- (strings, evaluation details added).
local PAGE = '"statsigMetadata":{"currentPage":"https://shop.example.com/product/%d"}'
local EVENTS = {
  '{"eventName":"add_to_cart","user":%s,"time":' .. now_ms .. ',"value":12.5,'
    .. '"metadata":{"sku":"SKU-%d","qty":"2"},' .. PAGE .. '}',
  '{"eventName":"statsig::gate_exposure","user":%s,"time":' .. now_ms .. ',"value":null,'
    .. '"metadata":{"gate":"new_checkout","gateValue":"true","ruleID":"5T2Gg0bwizTh9heDKL1El7",'
    .. '"reason":"Network:Recognized","lcut":"1717000000000","receivedAt":"%d"},'
    .. '"secondaryExposures":[],' .. PAGE .. '}',
  '{"eventName":"page_view","user":%s,"time":' .. now_ms .. ',"value":"/product/%d",'
    .. '"metadata":{"title":"Product"},' .. PAGE .. '}',
  '{"eventName":"statsig::config_exposure","user":%s,"time":' .. now_ms .. ',"value":null,'
    .. '"metadata":{"config":"checkout_layout","ruleID":"2oNQcTYn2JbYeHoRQMRxcP","rulePassed":"true",'
    .. '"reason":"Network:Recognized","lcut":"1717000000000","receivedAt":"%d"},'
    .. '"secondaryExposures":[],' .. PAGE .. '}',
  '{"eventName":"purchase","user":%s,"time":' .. now_ms .. ',"value":49.9,'
    .. '"metadata":{"order_id":"ORD-%d","currency":"EUR"},' .. PAGE .. '}',
}
local USER = '{"userID":"u-%d","email":"u%d@example.com","custom":{"plan":"pro"}}'
local META = '"statsigMetadata":{"sdkType":"javascript-client","sdkVersion":"3.33.0",'
  .. '"sessionID":"8d2f6c1a-5e4b-4f3d-9a7c-%012d","stableID":"0c5e9b7a-1d2f-4e3c-8b6a-%012d"}'

-- wrk.format() takes a request's headers as a whole table: the defaults and the event count.
local headers = {}

function request()
  sent = sent + 1
  if headers["Origin"] == nil then
    for k, v in pairs(wrk.headers) do headers[k] = v end
  end
  local n = (sent - 1) % 5 + 1
  local who = (thread_no or 1) * 1000000 + sent % 20000
  local user = string.format(USER, who, who)
  local events = {}
  for i = 1, n do
    events[i] = string.format(EVENTS[i], user, sent * 5 + i, sent % 9000)
  end
  local body = '{"events":[' .. table.concat(events, ",") .. '],'
    .. string.format(META, who, who) .. '}'
  local query = string.format(
    "?st=javascript-client&sv=3.33.0&t=%s&sid=8d2f6c1a-5e4b-4f3d-9a7c-%012d&ec=%d",
    now_ms, who, n
  )
  headers["statsig-event-count"] = tostring(n)
  return wrk.format(nil, url_path .. query, headers, body)
end
