-- The store's own knowledge (issue 15): the policies and answers a reply may be grounded in
-- (shipping times and costs, returns and exchanges, payment methods, contact hours, FAQ entries).
--
-- One row per entry, per store. The worker reads a store's entries in load_job_context (the same
-- round trip as the rest of the job) and picks the ones relevant to the email in Python
-- (worker/knowledge.py, decision 0023); the model sees them as data, never as instructions.
--
-- Who may do what (tenancy in SQL, as the console migration):
-- - the store's people (owners and agents) and operators read its entries (RLS);
-- - owners and operators add, change and remove them: RLS allows exactly that, and the console
--   actions below check it explicitly to tell 404 from 403 and write an event;
-- - the store CLI (service_role) uses save_knowledge, remove_knowledge, import_knowledge and
--   list_knowledge.
-- Bounds keep what one job loads small: at most MAX entries a store (200), a title of at most 200
-- and a text of at most 4,000 characters.

create table public.store_knowledge (
  id uuid primary key default gen_random_uuid(),
  store_id uuid not null references public.stores (id) on delete cascade,
  topic text not null check (topic in ('shipping', 'returns', 'payment', 'contact', 'faq')),
  title text not null check (length(btrim(title)) between 1 and 200),
  body text not null check (length(btrim(body)) between 1 and 4000),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  updated_by text,
  -- A title names one entry of a store, so an import of the same file updates instead of doubling.
  unique (store_id, title)
);

alter table public.store_knowledge enable row level security;
revoke all on public.store_knowledge from public, anon, authenticated, service_role;
grant select, insert, update, delete on public.store_knowledge to authenticated, service_role;
create policy store_knowledge_service_role on public.store_knowledge
  for all to service_role using (true) with check (true);
create policy store_knowledge_member_select on public.store_knowledge
  for select to authenticated
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));
create policy store_knowledge_owner_insert on public.store_knowledge
  for insert to authenticated
  with check (public.console_role_in(store_id) in ('owner', 'operator'));
create policy store_knowledge_owner_update on public.store_knowledge
  for update to authenticated
  using (public.console_role_in(store_id) in ('owner', 'operator'))
  with check (public.console_role_in(store_id) in ('owner', 'operator'));
create policy store_knowledge_owner_delete on public.store_knowledge
  for delete to authenticated
  using (public.console_role_in(store_id) in ('owner', 'operator'));

-- Add or change one entry: {id?, topic, title, body}. With an id, that entry of this store is
-- changed (PT404 if the store has none such; PT409 if another entry has the new title);
-- without, the entry titled so is added or, if the store has one, replaced (so importing a file
-- twice changes nothing). PT400 for a bad value, PT409 past the 200 entries a store may have. p_actor lands in the knowledge.saved event.
create or replace function public.save_knowledge(
  p_store_id uuid,
  p_entry jsonb,
  p_actor jsonb default null
)
returns public.store_knowledge
language plpgsql
set search_path = ''
as $$
declare
  v_max constant int := 200;
  v_id uuid;
  v_topic text := btrim(coalesce(p_entry ->> 'topic', ''));
  -- Spaces, tabs and line breaks around a title or text are the editor's, not the store's.
  v_title text := btrim(coalesce(p_entry ->> 'title', ''), E' \t\r\n');
  v_body text := btrim(coalesce(p_entry ->> 'body', ''), E' \t\r\n');
  v_row public.store_knowledge;
begin
  if jsonb_typeof(p_entry) is distinct from 'object' then
    raise exception 'an entry must be a JSON object' using errcode = 'PT400';
  end if;
  if not exists (select 1 from public.stores where id = p_store_id) then
    raise exception 'store % not found', p_store_id using errcode = 'PT404';
  end if;
  if v_topic not in ('shipping', 'returns', 'payment', 'contact', 'faq') then
    raise exception 'topic must be one of shipping, returns, payment, contact, faq, not "%"',
      v_topic using errcode = 'PT400';
  end if;
  if length(v_title) not between 1 and 200 then
    raise exception 'a title needs 1 to 200 characters' using errcode = 'PT400';
  end if;
  if length(v_body) not between 1 and 4000 then
    raise exception 'a text needs 1 to 4000 characters' using errcode = 'PT400';
  end if;

  if nullif(p_entry ->> 'id', '') is not null then
    begin
      v_id := (p_entry ->> 'id')::uuid;
    exception when invalid_text_representation then
      raise exception 'id must be a uuid' using errcode = 'PT400';
    end;
    if exists (select 1 from public.store_knowledge
               where store_id = p_store_id and title = v_title and id <> v_id) then
      raise exception 'another entry is already titled "%"', v_title using errcode = 'PT409';
    end if;
    update public.store_knowledge
    set topic = v_topic, title = v_title, body = v_body, updated_at = now(),
        updated_by = p_actor ->> 'email'
    where id = v_id and store_id = p_store_id
    returning * into v_row;
    if v_row.id is null then
      raise exception 'knowledge entry % not found in this store', v_id using errcode = 'PT404';
    end if;
  else
    -- The store row lock serialises concurrent adds, so the bound holds.
    perform 1 from public.stores where id = p_store_id for update;
    if (select count(*) from public.store_knowledge
        where store_id = p_store_id and title <> v_title) >= v_max then
      raise exception 'a store keeps at most % knowledge entries', v_max using errcode = 'PT409';
    end if;
    insert into public.store_knowledge (store_id, topic, title, body, updated_by)
    values (p_store_id, v_topic, v_title, v_body, p_actor ->> 'email')
    on conflict (store_id, title) do update
    set topic = excluded.topic, body = excluded.body, updated_at = now(),
        updated_by = excluded.updated_by
    returning * into v_row;
  end if;

  insert into public.events (store_id, event_type, detail)
  values (p_store_id, 'knowledge.saved',
          jsonb_build_object('id', v_row.id, 'topic', v_row.topic, 'title', v_row.title,
                             'by', p_actor));
  return v_row;
end;
$$;

-- Remove one entry of this store; false when it has none with that id.
create or replace function public.remove_knowledge(
  p_store_id uuid,
  p_id uuid,
  p_actor jsonb default null
)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_title text;
begin
  delete from public.store_knowledge where id = p_id and store_id = p_store_id
  returning title into v_title;
  if v_title is null then
    return false;
  end if;
  insert into public.events (store_id, event_type, detail)
  values (p_store_id, 'knowledge.removed',
          jsonb_build_object('id', p_id, 'title', v_title, 'by', p_actor));
  return true;
end;
$$;

-- A whole file of entries in one transaction (the CLI's import): each saved as save_knowledge
-- does (by title), and with p_replace the store's entries whose title is not among them removed.
-- Any bad entry rolls the whole import back. Returns {saved, removed}.
create or replace function public.import_knowledge(
  p_store_id uuid,
  p_entries jsonb,
  p_replace boolean default false,
  p_actor jsonb default null
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_entry jsonb;
  v_saved int := 0;
  v_removed int := 0;
  v_id uuid;
begin
  if jsonb_typeof(p_entries) is distinct from 'array' then
    raise exception 'entries must be a JSON array' using errcode = 'PT400';
  end if;
  if p_replace then
    for v_id in
      select k.id from public.store_knowledge k
      where k.store_id = p_store_id
        and k.title not in (select btrim(coalesce(e ->> 'title', ''), E' \t\r\n')
                            from jsonb_array_elements(p_entries) e)
    loop
      if public.remove_knowledge(p_store_id, v_id, p_actor) then
        v_removed := v_removed + 1;
      end if;
    end loop;
  end if;
  for v_entry in select e from jsonb_array_elements(p_entries) e loop
    perform public.save_knowledge(p_store_id, v_entry - 'id', p_actor);
    v_saved := v_saved + 1;
  end loop;
  return jsonb_build_object('saved', v_saved, 'removed', v_removed);
end;
$$;

-- A store's entries, by topic then title (what the CLI lists and load_job_context hands over).
create or replace function public.list_knowledge(p_store_id uuid)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'id', k.id, 'topic', k.topic, 'title', k.title, 'body', k.body,
           'updated_at', k.updated_at, 'updated_by', k.updated_by)
         order by k.topic, k.title), '[]'::jsonb)
  from public.store_knowledge k
  where k.store_id = p_store_id
$$;

-- Console: the knowledge page of one store (security invoker: RLS decides what is seen). Null
-- when the caller may not see the store.
create or replace function public.console_knowledge(p_store_id uuid)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'store', jsonb_build_object('id', s.id, 'name', s.name,
                                'role', public.console_role_in(s.id)),
    'entries', coalesce((
      select jsonb_agg(jsonb_build_object(
               'id', k.id, 'topic', k.topic, 'title', k.title, 'body', k.body,
               'updated_at', k.updated_at, 'updated_by', k.updated_by)
             order by k.topic, k.title)
      from public.store_knowledge k where k.store_id = s.id), '[]'::jsonb))
  from public.stores s
  where s.id = p_store_id
$$;

-- Raises unless the caller is an owner of the store (or an operator): 42501 otherwise, PT404 for
-- an unknown store.
create or replace function public.console_require_store_owner(p_store_id uuid)
returns void
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  if auth.uid() is null then
    raise exception 'not signed in' using errcode = '42501';
  end if;
  if not exists (select 1 from public.stores where id = p_store_id) then
    raise exception 'store % not found', p_store_id using errcode = 'PT404';
  end if;
  if coalesce(public.console_role_in(p_store_id), '') not in ('owner', 'operator') then
    raise exception 'only the store''s owners change its knowledge' using errcode = '42501';
  end if;
end;
$$;

create or replace function public.console_save_knowledge(p_store_id uuid, p_entry jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row public.store_knowledge;
begin
  perform public.console_require_store_owner(p_store_id);
  v_row := public.save_knowledge(p_store_id, p_entry, public.console_actor());
  return jsonb_build_object('id', v_row.id, 'topic', v_row.topic, 'title', v_row.title,
                            'body', v_row.body, 'updated_at', v_row.updated_at);
end;
$$;

create or replace function public.console_delete_knowledge(p_id uuid)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_store uuid := (select store_id from public.store_knowledge where id = p_id);
begin
  if auth.uid() is null then
    raise exception 'not signed in' using errcode = '42501';
  end if;
  if v_store is null then
    raise exception 'knowledge entry % not found', p_id using errcode = 'PT404';
  end if;
  perform public.console_require_store_owner(v_store);
  return public.remove_knowledge(v_store, p_id, public.console_actor());
end;
$$;

-- Privileges: the worker and the CLI (service_role) save, remove and list; a signed-in person
-- reads through RLS and changes through the console actions.
do $$
declare
  v_sig text;
begin
  foreach v_sig in array array[
    'public.save_knowledge(uuid, jsonb, jsonb)', 'public.remove_knowledge(uuid, uuid, jsonb)',
    'public.list_knowledge(uuid)', 'public.import_knowledge(uuid, jsonb, boolean, jsonb)',
    'public.console_knowledge(uuid)',
    'public.console_require_store_owner(uuid)', 'public.console_save_knowledge(uuid, jsonb)',
    'public.console_delete_knowledge(uuid)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated, service_role',
                   v_sig);
  end loop;
  foreach v_sig in array array[
    'public.save_knowledge(uuid, jsonb, jsonb)', 'public.remove_knowledge(uuid, uuid, jsonb)',
    'public.list_knowledge(uuid)', 'public.import_knowledge(uuid, jsonb, boolean, jsonb)'
  ] loop
    execute format('grant execute on function %s to service_role', v_sig);
  end loop;
  foreach v_sig in array array[
    'public.console_knowledge(uuid)', 'public.console_save_knowledge(uuid, jsonb)',
    'public.console_delete_knowledge(uuid)'
  ] loop
    execute format('grant execute on function %s to authenticated', v_sig);
  end loop;
end;
$$;
