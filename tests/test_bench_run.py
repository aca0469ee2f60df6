"""benches/run.py's reading of wrk's output, which every published number (and the experiments'
CPU-µs per request) goes through."""

import pytest

from benches import run

WRK_OUTPUT = """\
Running 8s test @ http://127.0.0.1:40123/queries?n=20
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   262.10ms   31.55ms 400.12ms   71.20%
    Req/Sec   244.51     40.12   320.00     70.00%
  Latency Distribution
     50%  258.40ms
     75%  280.01ms
     90%  301.77ms
     99%    1.20s
  1957 requests in 8.02s, 1.45MB read
  Socket errors: connect 0, read 0, write 0, timeout 3
  Non-2xx or 3xx responses: 12
Requests/sec:    244.02
Transfer/sec:    185.33KB
"""


def test_wrk_output_is_read_into_rate_count_latencies_and_errors():
    result = run.parse_wrk(WRK_OUTPUT)
    assert result["requests_per_second"] == 244.02
    assert result["requests"] == run.completed_requests(WRK_OUTPUT) == 1957
    assert (result["p50_ms"], result["p75_ms"], result["p90_ms"], result["p99_ms"]) == (
        258.40,
        280.01,
        301.77,
        1200.0,
    )
    assert result["non_2xx"] == 12
    assert result["socket_errors"] == "connect 0, read 0, write 0, timeout 3"


def test_wrk_output_without_a_rate_is_an_error_not_a_zero():
    with pytest.raises(RuntimeError, match="no Requests/sec"):
        run.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")
    assert run.completed_requests("unable to connect\n") == 0
