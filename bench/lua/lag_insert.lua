-- dbmux benchmark writer: single-row autocommit INSERTs into `lag_probe`, whose `created_us` column
-- defaults to the master's clock in microseconds. Replicas add `applied_us` defaulting to their own clock,
-- so `applied_us - created_us` is each row's end-to-end lag. Rate and duration come from sysbench's
-- --rate and --time.
function thread_init()
  drv = sysbench.sql.driver()
  con = drv:connect()
end

function thread_done()
  con:disconnect()
end

function event()
  con:query("INSERT INTO lag_probe (payload) VALUES ('" .. sysbench.rand.string("####################") .. "')")
end
