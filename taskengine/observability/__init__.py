"""What the engine shows of itself: ``metrics`` (the Prometheus metrics, updated where
things happen), ``collectors`` (database gauges computed at scrape time, and the
/metrics view), ``logs`` (plain or JSON log lines) and ``health`` (/healthz, /readyz).
"""
