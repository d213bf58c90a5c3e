"""HTTP/1.1 in and out, knowing nothing of experiments: the server's fast path and the pooled
backend client."""
