-- wrk script: send DEPTH requests per write (wrk ... -s scripts/pipeline.lua URL -- DEPTH).
-- wrk counts each response; its latency figures are only meaningful at depth 1.
init = function(args)
  local depth = tonumber(args[1]) or 1
  local requests = {}
  for i = 1, depth do requests[i] = wrk.format() end
  batch = table.concat(requests)
end
request = function() return batch end
