-- wrk script for the small-request shape (bench/small.py): one Segment `track` call of about
-- 460 bytes per request, each with a messageId of its own, as a server library or
-- analytics.js sends when it does not batch.
--
--   WRITE_KEY=wk-bench URL_PATH=/segment/v1/track \
--     wrk -t1 -c64 -d15s --latency -s bench/small-track.lua http://127.0.0.1:PORT
--
-- Environment:
--   WRITE_KEY  the source's write key, sent as HTTP Basic user with an empty password
--   URL_PATH   request path (default /segment/v1/track; "/" for Fluent Bit's http input)
--   RUN_ID     prefix of every messageId (default: wrk's start time), so runs that share a
--              spool do not collide in the relay's messageId dedup
-- The event timestamp is taken once, when wrk starts: keep runs shorter than the relay's
-- accepted clock skew.

local write_key = os.getenv("WRITE_KEY") or "wk-bench"
local url_path = os.getenv("URL_PATH") or "/segment/v1/track"
local run_id = os.getenv("RUN_ID") or tostring(os.time())

-- RFC 4648 base64, three input bytes to four output characters, '=' padded.
local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local used = math.min(3, #s - i + 1) + 1 -- characters that carry input bits
    for j = 1, 4 do
      if j <= used then
        local index = math.floor(n / 2 ^ (6 * (4 - j))) % 64
        out[#out + 1] = ALPHABET:sub(index + 1, index + 1)
      else
        out[#out + 1] = "="
      end
    end
  end
  return table.concat(out)
end

-- Each wrk thread has its own Lua state; setup() runs in the main one and numbers them, so
-- messageIds stay unique with -t2 and more.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

local timestamp = os.date("!%Y-%m-%dT%H:%M:%S.000Z")
local sent = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic " .. base64(write_key .. ":")

local BODY = '{"type":"track","event":"Order Completed","userId":"user-%d",'
  .. '"anonymousId":"6f1c2a9e-2b7d-4c1e-8f3a-%012d","messageId":"%s-%d-%d",'
  .. '"timestamp":"' .. timestamp .. '",'
  .. '"properties":{"revenue":24.5,"currency":"EUR","sku":"SKU-%d"},'
  .. '"context":{"library":{"name":"analytics.js","version":"2.11.1"},'
  .. '"page":{"path":"/checkout","url":"https://shop.example.com/checkout"},'
  .. '"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"}}'

function request()
  sent = sent + 1
  local body = string.format(
    BODY, sent % 50000, sent, run_id, thread_no or 1, sent, sent % 2000
  )
  return wrk.format(nil, url_path, nil, body)
end
