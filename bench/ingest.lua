-- wrk script for bench/ingest: POST the Evolink "completed" callback, a new task id per request.
--
--   wrk -t2 -c64 -d10s --latency -s bench/ingest.lua http://127.0.0.1:P/callbacks/evolink/TOKEN -- PREFIX
--
-- The task id is task-unified-1756817821-<PREFIX>-<thread>-<counter>: unique across threads
-- (thread number) and across runs (PREFIX), so no request is a duplicate of another.
-- response() counts 2xx answers (acked) apart from everything else; done() prints one line
-- "BENCH_JSON {...}" that bench/ingest parses.

local template = '{"id":"%s","object":"video.generation.task","created":1756817821,'
  .. '"model":"seedance-2.0","status":"completed","progress":100,'
  .. '"results":["https://cdn.example.com/videos/%s.mp4"],"type":"video",'
  .. '"task_info":{"can_cancel":false}}'

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1] or "run"
  counter = 0
  acked = 0
  non2xx = 0
  duplicates = 0
  last_bad_status = 0
end

function request()
  counter = counter + 1
  local id = string.format("task-unified-1756817821-%s-%d-%d", prefix, tid, counter)
  local body = string.format(template, id, id)
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    acked = acked + 1
    if body ~= nil and string.find(body, '"duplicate":true', 1, true) then
      duplicates = duplicates + 1
    end
  else
    non2xx = non2xx + 1
    last_bad_status = status
  end
end

function done(summary, latency, requests)
  local total_acked, total_non2xx, total_dup, total_sent, bad = 0, 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    total_acked = total_acked + thread:get("acked")
    total_non2xx = total_non2xx + thread:get("non2xx")
    total_dup = total_dup + thread:get("duplicates")
    total_sent = total_sent + thread:get("counter")
    local status = thread:get("last_bad_status")
    if status ~= 0 then bad = status end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"sent":%d,"duration_us":%d,"acked":%d,"non2xx":%d,'
      .. '"last_bad_status":%d,"duplicates":%d,"errors_connect":%d,"errors_read":%d,'
      .. '"errors_write":%d,"errors_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, total_sent, summary.duration, total_acked, total_non2xx, bad, total_dup,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
