-- Helpers every later file uses: the updated_at trigger, the append-only guard of the event
-- trail and time-ordered ids. Trigger functions are called by their triggers only, so no API role
-- may execute them; uuid_generate_v7 is the default of job_queue.id and callable by service_role.

-- Keeps updated_at honest no matter which code path writes the row.
create or replace function public.set_updated_at()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end;
$$;

-- The event trail is evidence; rewriting it would defeat its purpose. Deletes stay possible for
-- the table owner (retention), which privileges already restrict.
create or replace function public.forbid_event_update()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'events are append-only'
    using errcode = 'insufficient_privilege';
end;
$$;

revoke all on function public.set_updated_at() from public, anon, authenticated, service_role;
revoke all on function public.forbid_event_update() from public, anon, authenticated, service_role;

-- Time-ordered job ids (UUID version 7: 48-bit Unix milliseconds, then random bits). Every
-- transition is a non-HOT update (status is in the partial indexes' predicates), so it inserts a
-- new primary-key entry; with random v4 ids those land on random leaves across the whole
-- history's index, and the claim path's working set grew with history past shared_buffers
-- (claim+complete 2x slower at 1M finished jobs). Time-ordered ids keep the live jobs' keys,
-- and their events' job_id keys, on the rightmost leaves. Postgres 15 has no uuidv7().
create or replace function public.uuid_generate_v7()
returns uuid
language sql
volatile
set search_path = ''
as $$
    -- pg_catalog resolves with an empty search_path; overlay/substring need their SQL syntax
    select encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    placing substring(int8send(
                        (extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
                    from 1 for 6),
            52, 1), 53, 1),
        'hex')::uuid;
$$;

revoke all on function public.uuid_generate_v7() from public, anon, authenticated;
grant execute on function public.uuid_generate_v7() to service_role;
