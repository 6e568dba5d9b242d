-- pg_cron wakes the worker through pg_net, as the seed did, without ever writing a URL or a
-- token here: both are read from Vault when each job runs. Create them once per project:
--   select vault.create_secret('https://<app>.fly.dev', 'worker_url');
--   select vault.create_secret('<the WORKER_SECRET>', 'worker_secret');
-- The schedules themselves are in the cron file, the last migration: pg_cron only exists in the
-- cluster's one cron database, so every other file applies to any database (bench, snapshot).

create extension if not exists pg_net;

-- Calls one worker trigger with the bearer token from Vault. A missing secret raises, so the
-- failure is recorded in cron.job_run_details instead of silently calling nowhere.
create or replace function public.call_worker(p_path text, p_timeout_ms integer default 5000)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_url text;
  v_secret text;
begin
  if p_path is null or p_path !~ '^/[a-z0-9/-]+$' then
    raise exception 'call_worker: % is not a worker path', p_path
      using errcode = 'invalid_parameter_value';
  end if;
  select ds.decrypted_secret into v_url
  from vault.decrypted_secrets ds where ds.name = 'worker_url';
  select ds.decrypted_secret into v_secret
  from vault.decrypted_secrets ds where ds.name = 'worker_secret';
  if coalesce(v_url, '') = '' then
    raise exception 'call_worker: Vault secret "worker_url" is missing'
      using hint = 'select vault.create_secret(''https://<app>.fly.dev'', ''worker_url'');';
  end if;
  if coalesce(v_secret, '') = '' then
    raise exception 'call_worker: Vault secret "worker_secret" is missing'
      using hint = 'select vault.create_secret(''<WORKER_SECRET>'', ''worker_secret'');';
  end if;
  -- pg_net answers with a request id at once; the worker answers 202 and runs in the
  -- background, so the timeout only has to cover the handshake.
  return net.http_post(
    url := rtrim(v_url, '/') || p_path,
    body := '{}'::jsonb,
    headers := jsonb_build_object(
      'Content-Type', 'application/json',
      'Authorization', 'Bearer ' || v_secret
    ),
    timeout_milliseconds := p_timeout_ms
  );
end;
$$;

revoke all on function public.call_worker(text, integer) from public, anon, authenticated;
grant execute on function public.call_worker(text, integer) to service_role;
