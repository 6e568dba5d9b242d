-- Base domain schema: stores, their mailboxes, conversations, inbound messages, outbound replies,
-- the credit ledger and the append-only event trail.
--
-- Access model: service_role (the worker) reaches these tables directly or through the SQL API;
-- an authenticated user may only read the rows of stores it owns; anon gets nothing. Supabase
-- (and the local stack) grant everything on new public objects to anon, authenticated and
-- service_role by default, so every grant below starts from an explicit revoke.

-- stores ---------------------------------------------------------------------------------------

create table public.stores (
  id uuid primary key default gen_random_uuid(),
  owner_id uuid references auth.users (id) on delete set null,
  name text not null check (btrim(name) <> ''),
  support_email text not null
    check (support_email = lower(support_email) and support_email ~ '^[^@\s]+@[^@\s]+$'),
  -- Other addresses of the store: mail from them is never answered.
  extra_addresses text[] not null default '{}'
    check (extra_addresses::text = lower(extra_addresses::text)),
  imap_host text not null check (btrim(imap_host) <> ''),
  imap_port int not null check (imap_port between 1 and 65535),
  imap_user text not null check (imap_user <> ''),
  imap_tls text not null default 'ssl' check (imap_tls in ('ssl', 'starttls', 'plain')),
  imap_folder text not null default 'INBOX' check (imap_folder <> ''),
  -- Credentials live in Vault; only the secret ids are kept here.
  imap_password_secret_id uuid,
  smtp_host text not null check (btrim(smtp_host) <> ''),
  smtp_port int not null check (smtp_port between 1 and 65535),
  smtp_user text not null check (smtp_user <> ''),
  smtp_tls text not null default 'starttls' check (smtp_tls in ('ssl', 'starttls', 'plain')),
  smtp_password_secret_id uuid,
  shopify_domain text check (shopify_domain is null or shopify_domain ~ '^[a-z0-9][a-z0-9.-]*$'),
  shopify_token_secret_id uuid,
  credits int not null default 0 check (credits >= 0),
  active boolean not null default true,
  -- 'auto' answers in the customer's language; otherwise a BCP 47 tag such as 'pt-BR'.
  reply_language text not null default 'auto'
    check (reply_language ~ '^(auto|[a-z]{2,3}(-[A-Za-z0-9]{2,8})*)$'),
  reply_signature text,
  reply_tone text not null default 'friendly' check (btrim(reply_tone) <> ''),
  reply_mode text not null default 'auto_send' check (reply_mode in ('auto_send', 'draft_only')),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index stores_owner_id_idx on public.stores (owner_id) where owner_id is not null;

create trigger stores_set_updated_at
  before update on public.stores
  for each row execute function public.set_updated_at();

-- mailbox_state --------------------------------------------------------------------------------

create table public.mailbox_state (
  store_id uuid not null references public.stores (id) on delete cascade,
  folder text not null,
  uidvalidity bigint not null check (uidvalidity >= 0),
  last_uid bigint not null default 0 check (last_uid >= 0),
  updated_at timestamptz not null default now(),
  primary key (store_id, folder)
);

create trigger mailbox_state_set_updated_at
  before update on public.mailbox_state
  for each row execute function public.set_updated_at();

-- conversations --------------------------------------------------------------------------------

create table public.conversations (
  id uuid primary key default gen_random_uuid(),
  store_id uuid not null references public.stores (id) on delete cascade,
  customer_email text check (customer_email = lower(customer_email)),
  subject text,
  created_at timestamptz not null default now(),
  last_message_at timestamptz not null default now()
);

create index conversations_store_recent_idx
  on public.conversations (store_id, last_message_at desc);

-- messages (inbound) ---------------------------------------------------------------------------

create table public.messages (
  id uuid primary key default gen_random_uuid(),
  store_id uuid not null references public.stores (id) on delete cascade,
  conversation_id uuid not null references public.conversations (id) on delete cascade,
  -- RFC 5322 Message-ID with its angle brackets; bounded so the unique index can hold it.
  message_id text not null check (length(message_id) between 1 and 998),
  imap_folder text,
  imap_uid bigint,
  from_address text check (from_address = lower(from_address)),
  from_name text,
  reply_to text check (reply_to = lower(reply_to)),
  to_addresses text[] not null default '{}'
    check (to_addresses::text = lower(to_addresses::text)),
  cc_addresses text[] not null default '{}'
    check (cc_addresses::text = lower(cc_addresses::text)),
  subject text,
  sent_at timestamptz,
  in_reply_to text,
  "references" text[] not null default '{}',
  -- Only the headers loop detection needs, names lower-cased.
  headers jsonb not null default '{}' check (jsonb_typeof(headers) = 'object'),
  body_text text,
  attachments jsonb not null default '[]' check (jsonb_typeof(attachments) = 'array'),
  size_bytes int check (size_bytes >= 0),
  -- Why the message is stored but never processed (e.g. 'oversized'); null for normal mail.
  skip_reason text check (skip_reason <> ''),
  received_at timestamptz not null default now(),
  unique (store_id, message_id)
);

create index messages_conversation_idx on public.messages (conversation_id, received_at);
create index messages_store_received_idx on public.messages (store_id, received_at desc);

-- replies (outbound) ---------------------------------------------------------------------------

create table public.replies (
  id uuid primary key default gen_random_uuid(),
  store_id uuid not null references public.stores (id) on delete cascade,
  conversation_id uuid references public.conversations (id) on delete cascade,
  -- One reply per inbound message: the key that makes a retried job find its earlier reply.
  message_id uuid not null unique references public.messages (id) on delete cascade,
  job_id uuid,
  status text not null default 'drafted'
    check (status in ('drafted', 'sending', 'sent', 'held', 'failed')),
  to_address text not null check (to_address = lower(to_address)),
  subject text,
  body_text text,
  smtp_message_id text unique,
  in_reply_to text,
  "references" text[] not null default '{}',
  hold_reason text,
  intent text,
  language text,
  model text,
  error text,
  created_at timestamptz not null default now(),
  sending_at timestamptz,
  sent_at timestamptz,
  check (status <> 'sent' or sent_at is not null),
  check (status <> 'sending' or sending_at is not null)
);

-- Serves the per-customer reply cap (replies sending or sent to an address in a window).
create index replies_recent_to_idx
  on public.replies (store_id, to_address, sending_at)
  where status in ('sending', 'sent');
create index replies_store_created_idx on public.replies (store_id, created_at desc);
create index replies_conversation_idx on public.replies (conversation_id);
create index replies_job_idx on public.replies (job_id) where job_id is not null;

-- credit_ledger --------------------------------------------------------------------------------

create table public.credit_ledger (
  id bigint generated always as identity primary key,
  store_id uuid not null references public.stores (id) on delete cascade,
  job_id uuid,
  delta int not null check (delta <> 0),
  reason text not null check (reason in ('reply', 'refund', 'topup', 'adjustment', 'grant')),
  created_at timestamptz not null default now()
);

-- At most one charge and one refund per job, even under concurrent calls.
create unique index credit_ledger_job_reason_key
  on public.credit_ledger (job_id, reason) where job_id is not null;
create index credit_ledger_store_idx on public.credit_ledger (store_id, created_at);

-- events (append-only) -------------------------------------------------------------------------

-- No foreign keys: the history must outlive the stores, messages and jobs it describes.
create table public.events (
  id bigint generated always as identity primary key,
  store_id uuid,
  job_id uuid,
  conversation_id uuid,
  message_id uuid,
  event_type text not null check (event_type ~ '^[a-z][a-z_]*(\.[a-z][a-z_]*)+$'),
  detail jsonb not null default '{}',
  created_at timestamptz not null default now()
);

create index events_job_idx on public.events (job_id, id) where job_id is not null;
create index events_store_idx on public.events (store_id, created_at) where store_id is not null;
-- No index by conversation: nothing reads events that way, and every queue transition writes an
-- event, so each index here is paid twice per job (bench/README.md).
create index events_created_at_idx on public.events using brin (created_at);

create trigger events_append_only
  before update on public.events
  for each row execute function public.forbid_event_update();

-- Privileges -----------------------------------------------------------------------------------

revoke all on table
  public.stores, public.mailbox_state, public.conversations, public.messages, public.replies,
  public.credit_ledger, public.events
  from public, anon, authenticated, service_role;

grant select on table
  public.stores, public.mailbox_state, public.conversations, public.messages, public.replies,
  public.credit_ledger, public.events
  to authenticated;

grant select, insert, update, delete on table
  public.stores, public.mailbox_state, public.conversations, public.messages, public.replies,
  public.credit_ledger
  to service_role;

-- Events: inserts and reads only; no role but the owner may rewrite or delete history.
grant select, insert on table public.events to service_role;

-- Identity columns draw their values without sequence privileges; the default grants would let
-- any API role setval() them and break every later insert.
revoke all on sequence public.credit_ledger_id_seq, public.events_id_seq
  from public, anon, authenticated, service_role;

-- Row level security ---------------------------------------------------------------------------

alter table public.stores enable row level security;
alter table public.mailbox_state enable row level security;
alter table public.conversations enable row level security;
alter table public.messages enable row level security;
alter table public.replies enable row level security;
alter table public.credit_ledger enable row level security;
alter table public.events enable row level security;

-- service_role has BYPASSRLS on Supabase; the explicit policies keep the intent readable and make
-- the rules hold even where it does not.
create policy stores_service_role on public.stores
  for all to service_role using (true) with check (true);
create policy mailbox_state_service_role on public.mailbox_state
  for all to service_role using (true) with check (true);
create policy conversations_service_role on public.conversations
  for all to service_role using (true) with check (true);
create policy messages_service_role on public.messages
  for all to service_role using (true) with check (true);
create policy replies_service_role on public.replies
  for all to service_role using (true) with check (true);
create policy credit_ledger_service_role on public.credit_ledger
  for all to service_role using (true) with check (true);
create policy events_service_role on public.events
  for all to service_role using (true) with check (true);

-- (select auth.uid()) is evaluated once per statement rather than once per row.
create policy stores_owner_select on public.stores
  for select to authenticated
  using (owner_id = (select auth.uid()));

create policy mailbox_state_owner_select on public.mailbox_state
  for select to authenticated
  using (exists (select 1 from public.stores s
                 where s.id = store_id and s.owner_id = (select auth.uid())));
create policy conversations_owner_select on public.conversations
  for select to authenticated
  using (exists (select 1 from public.stores s
                 where s.id = store_id and s.owner_id = (select auth.uid())));
create policy messages_owner_select on public.messages
  for select to authenticated
  using (exists (select 1 from public.stores s
                 where s.id = store_id and s.owner_id = (select auth.uid())));
create policy replies_owner_select on public.replies
  for select to authenticated
  using (exists (select 1 from public.stores s
                 where s.id = store_id and s.owner_id = (select auth.uid())));
create policy credit_ledger_owner_select on public.credit_ledger
  for select to authenticated
  using (exists (select 1 from public.stores s
                 where s.id = store_id and s.owner_id = (select auth.uid())));
create policy events_owner_select on public.events
  for select to authenticated
  using (exists (select 1 from public.stores s
                 where s.id = store_id and s.owner_id = (select auth.uid())));
