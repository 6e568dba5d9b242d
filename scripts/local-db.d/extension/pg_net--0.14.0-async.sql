-- Local stand-in for pg_net 0.14 (see supabase/pg_net sql/pg_net.sql): the same net.http_get/
-- http_post/http_delete signatures and the same net.http_request_queue and net._http_response
-- tables, with pg_net's semantics: a call only queues the request in the caller's transaction;
-- a worker sends what has been committed and records the response in net._http_response, so a
-- rolled-back caller sends nothing and callers poll for the response by request id. Responses
-- older than pg_net.ttl (default 6 hours) are deleted by the worker, as pg_net's does.
--
-- The worker: real pg_net runs a background worker (a C extension, preloaded). Here it is the
-- procedure net._run_worker(), which scripts/local-db keeps running in a session of its own
-- (application_name 'pg_net worker') in the cluster's main database. Differences: it sends one
-- request at a time (pg_net sends a batch concurrently through libcurl), in plpython3u's urllib.
\echo Use "CREATE EXTENSION pg_net" to load this file. \quit
\echo Use "CREATE EXTENSION pg_net" to load this file. \quit

CREATE SCHEMA IF NOT EXISTS net;

CREATE DOMAIN net.http_method AS text
CHECK (value ILIKE 'get' OR value ILIKE 'post' OR value ILIKE 'delete');

CREATE UNLOGGED TABLE net.http_request_queue (
  id bigserial,
  method net.http_method NOT NULL,
  url text NOT NULL,
  headers jsonb NOT NULL,
  body bytea,
  timeout_milliseconds int NOT NULL
);

CREATE UNLOGGED TABLE net._http_response (
  id bigint,
  status_code integer,
  content_type text,
  headers jsonb,
  content text,
  timed_out bool,
  error_msg text,
  created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON net._http_response (created);

CREATE FUNCTION net._encode_url_with_params(url text, params jsonb)
RETURNS text
LANGUAGE plpython3u
IMMUTABLE
AS $$
import json
import urllib.parse

pairs = json.loads(params) if params else {}
if not pairs:
    return url
query = urllib.parse.urlencode(
    {k: v if isinstance(v, str) else json.dumps(v) for k, v in pairs.items()})
return url + ("&" if "?" in url else "?") + query
$$;

-- Sends one queued request and records the outcome, as the real background worker does.
CREATE FUNCTION net._send(request_id bigint)
RETURNS void
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = ''
AS $$
import json
import socket
import time
import urllib.error
import urllib.request

rows = plpy.execute(plpy.prepare(
    "select method, url, headers, body, timeout_milliseconds"
    " from net.http_request_queue where id = $1", ["bigint"]), [request_id])
if not rows:
    return
req = rows[0]
timeout_ms = req["timeout_milliseconds"]
deadline = time.monotonic() + timeout_ms / 1000.0
headers = {k: str(v) for k, v in json.loads(req["headers"] or "{}").items()}
request = urllib.request.Request(
    req["url"], data=req["body"], headers=headers, method=req["method"].upper())
# The environment of the server process must not route loopback test traffic via a proxy.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

status = content_type = content = error_msg = None
resp_headers = None
timed_out = False


def socket_of(resp):
    # HTTPError wraps the HTTPResponse, which wraps a buffered SocketIO; walk down to the socket.
    obj = resp
    for _ in range(4):
        raw = getattr(obj, "raw", None)
        if raw is not None and hasattr(raw, "_sock"):
            return raw._sock
        obj = getattr(obj, "fp", None)
        if obj is None:
            return None
    return None


def read_until_deadline(resp):
    # The socket timeout bounds each read; shrinking it to what is left bounds the whole exchange.
    sock = socket_of(resp)
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError()
        if sock is not None and sock.fileno() != -1:
            sock.settimeout(remaining)
        chunk = resp.read(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


try:
    try:
        resp = opener.open(request, timeout=max(deadline - time.monotonic(), 0.001))
    except urllib.error.HTTPError as http_error:
        resp = http_error
    with resp:
        status = resp.status if hasattr(resp, "status") else resp.code
        resp_headers = dict(resp.headers.items())
        content_type = resp.headers.get("Content-Type")
        content = read_until_deadline(resp).decode("utf-8", errors="replace")
except (TimeoutError, socket.timeout):
    timed_out = True
except urllib.error.URLError as url_error:
    if isinstance(url_error.reason, (TimeoutError, socket.timeout)):
        timed_out = True
    else:
        error_msg = str(url_error.reason)
except Exception as other:  # every failure is recorded, as pg_net does
    error_msg = f"{type(other).__name__}: {other}"
if timed_out:
    status = content_type = content = resp_headers = None
    error_msg = f"Timeout of {timeout_ms} ms reached"

plpy.execute(plpy.prepare(
    "insert into net._http_response"
    " (id, status_code, content_type, headers, content, timed_out, error_msg)"
    " values ($1, $2, $3, $4, $5, $6, $7)",
    ["bigint", "integer", "text", "jsonb", "text", "boolean", "text"]),
    [request_id, status, content_type,
     None if resp_headers is None else json.dumps(resp_headers),
     content, timed_out, error_msg])
plpy.execute(plpy.prepare(
    "delete from net.http_request_queue where id = $1", ["bigint"]), [request_id])
$$;

-- Queues one request in the caller's transaction; the worker sends it once that commits.
CREATE FUNCTION net._request(
  method text, url text, headers jsonb, body bytea, timeout_milliseconds int
)
RETURNS bigint
VOLATILE
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
  request_id bigint;
BEGIN
  INSERT INTO net.http_request_queue (method, url, headers, body, timeout_milliseconds)
  VALUES (method, url, headers, body, timeout_milliseconds)
  RETURNING id INTO request_id;
  RETURN request_id;
END
$$;

-- The worker's loop: each committed request is sent and answered in a transaction of its own;
-- between batches, responses past pg_net.ttl are deleted. Runs until its session ends.
-- No SET search_path: a procedure with SET clauses cannot COMMIT; every name is qualified.
CREATE PROCEDURE net._run_worker(poll_interval_seconds float8 DEFAULT 0.1)
LANGUAGE plpgsql
AS $$
DECLARE
  request_id bigint;
  ttl interval;
BEGIN
  LOOP
    -- Only committed requests are visible here: a rolled-back caller's never are.
    SELECT q.id INTO request_id FROM net.http_request_queue q ORDER BY q.id LIMIT 1;
    IF request_id IS NOT NULL THEN
      BEGIN
        PERFORM net._send(request_id);
      EXCEPTION WHEN OTHERS THEN
        -- A request the sender itself cannot handle is answered with the error, never retried
        -- forever at the head of the queue.
        INSERT INTO net._http_response (id, timed_out, error_msg)
        VALUES (request_id, false, SQLERRM);
        DELETE FROM net.http_request_queue q WHERE q.id = request_id;
      END;
    ELSE
      ttl := coalesce(nullif(current_setting('pg_net.ttl', true), ''), '6 hours')::interval;
      DELETE FROM net._http_response r WHERE r.created < now() - ttl;
      PERFORM pg_catalog.pg_sleep(poll_interval_seconds);
    END IF;
    COMMIT;
  END LOOP;
END
$$;
REVOKE ALL ON PROCEDURE net._run_worker(float8) FROM PUBLIC;

CREATE FUNCTION net.http_get(
  url text,
  params jsonb DEFAULT '{}'::jsonb,
  headers jsonb DEFAULT '{}'::jsonb,
  timeout_milliseconds int DEFAULT 5000
)
RETURNS bigint
STRICT
VOLATILE
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
  RETURN net._request(
    'GET', net._encode_url_with_params(url, params), headers, NULL, timeout_milliseconds
  );
END
$$;

CREATE FUNCTION net.http_post(
  url text,
  body jsonb DEFAULT '{}'::jsonb,
  params jsonb DEFAULT '{}'::jsonb,
  headers jsonb DEFAULT '{"Content-Type": "application/json"}'::jsonb,
  timeout_milliseconds int DEFAULT 5000
)
RETURNS bigint
VOLATILE
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
  IF body IS NULL THEN
    RAISE EXCEPTION 'body must not be null';
  END IF;
  -- As pg_net: headers without a Content-Type get the JSON one back.
  IF NOT EXISTS (
    SELECT FROM jsonb_object_keys(coalesce(headers, '{}'::jsonb)) AS h(name)
    WHERE lower(h.name) = 'content-type'
  ) THEN
    headers := coalesce(headers, '{}'::jsonb) || '{"Content-Type": "application/json"}'::jsonb;
  END IF;
  RETURN net._request(
    'POST',
    net._encode_url_with_params(url, coalesce(params, '{}'::jsonb)),
    headers,
    convert_to(body::text, 'UTF8'),
    timeout_milliseconds
  );
END
$$;

CREATE FUNCTION net.http_delete(
  url text,
  params jsonb DEFAULT '{}'::jsonb,
  headers jsonb DEFAULT '{}'::jsonb,
  timeout_milliseconds int DEFAULT 5000
)
RETURNS bigint
STRICT
VOLATILE
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
  RETURN net._request(
    'DELETE', net._encode_url_with_params(url, params), headers, NULL, timeout_milliseconds
  );
END
$$;

-- Outbound HTTP from the database is a privilege: only the server-side roles get it.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA net FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA net FROM PUBLIC;
GRANT USAGE ON SCHEMA net TO postgres, service_role;
GRANT EXECUTE ON FUNCTION net.http_get(text, jsonb, jsonb, int),
  net.http_post(text, jsonb, jsonb, jsonb, int),
  net.http_delete(text, jsonb, jsonb, int) TO postgres, service_role;
GRANT SELECT ON net._http_response TO postgres, service_role;
-- As pg_net's own script: postgres may read and clean up both tables.
GRANT ALL ON SCHEMA net TO postgres;
GRANT ALL ON ALL TABLES IN SCHEMA net TO postgres;
