-- Privileges and the RLS matrix of the base tables: anon nothing; an authenticated user reads
-- only the rows of stores it owns and writes nothing; service_role everything except rewriting
-- events.
begin;
select plan(66);

-- Two stores with one row in every table each; a third user owns nothing.
insert into auth.users (id, email) values
  ('00000000-0000-4000-8000-0000000000a1', 'owner@example.test'),
  ('00000000-0000-4000-8000-0000000000b1', 'other-owner@example.test'),
  ('00000000-0000-4000-8000-0000000000c1', 'stranger@example.test');
insert into public.stores (id, owner_id, name, support_email, imap_host, imap_port, imap_user,
                           smtp_host, smtp_port, smtp_user)
values
  ('10000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-0000000000a1', 'A',
   'help@a.test', 'imap.a.test', 993, 'help', 'smtp.a.test', 587, 'help'),
  ('10000000-0000-4000-8000-00000000000b', '00000000-0000-4000-8000-0000000000b1', 'B',
   'help@b.test', 'imap.b.test', 993, 'help', 'smtp.b.test', 587, 'help');
insert into public.mailbox_state (store_id, folder, uidvalidity, last_uid)
select id, 'INBOX', 1, 10 from public.stores where name in ('A', 'B');
insert into public.conversations (id, store_id, customer_email)
values ('20000000-0000-4000-8000-00000000000a', '10000000-0000-4000-8000-00000000000a',
        'x@c.test'),
       ('20000000-0000-4000-8000-00000000000b', '10000000-0000-4000-8000-00000000000b',
        'y@c.test');
insert into public.messages (id, store_id, conversation_id, message_id)
values ('30000000-0000-4000-8000-00000000000a', '10000000-0000-4000-8000-00000000000a',
        '20000000-0000-4000-8000-00000000000a', '<a@c.test>'),
       ('30000000-0000-4000-8000-00000000000b', '10000000-0000-4000-8000-00000000000b',
        '20000000-0000-4000-8000-00000000000b', '<b@c.test>');
insert into public.replies (store_id, conversation_id, message_id, to_address)
values ('10000000-0000-4000-8000-00000000000a', '20000000-0000-4000-8000-00000000000a',
        '30000000-0000-4000-8000-00000000000a', 'x@c.test'),
       ('10000000-0000-4000-8000-00000000000b', '20000000-0000-4000-8000-00000000000b',
        '30000000-0000-4000-8000-00000000000b', 'y@c.test');
insert into public.credit_ledger (store_id, delta, reason)
values ('10000000-0000-4000-8000-00000000000a', 1, 'topup'),
       ('10000000-0000-4000-8000-00000000000b', 1, 'topup');
insert into public.events (store_id, event_type)
values ('10000000-0000-4000-8000-00000000000a', 'message.received'),
       ('10000000-0000-4000-8000-00000000000b', 'message.received');

-- Counts the rows of both test stores in a table, as whoever is the current role.
create function pg_temp.visible(p_table text) returns int language plpgsql as $$
declare
  n int;
begin
  execute format('select count(*)::int from public.%I where %I = any ($1)', p_table,
                 case when p_table = 'stores' then 'id' else 'store_id' end)
    into n
    using array['10000000-0000-4000-8000-00000000000a',
                '10000000-0000-4000-8000-00000000000b']::uuid[];
  return n;
end;
$$;
grant execute on all functions in schema pg_temp to anon, authenticated, service_role;

-- RLS is on everywhere.
select ok((select bool_and(c.relrowsecurity) from pg_class c
           where c.oid = any (array['public.stores', 'public.mailbox_state',
                                    'public.conversations', 'public.messages', 'public.replies',
                                    'public.credit_ledger', 'public.events']::regclass[])),
          'row level security is enabled on every base table');

-- Table privileges per role.
select table_privs_are('public', t, 'anon', '{}', format('anon has no privilege on %s', t))
from unnest(array['stores', 'mailbox_state', 'conversations', 'messages', 'replies',
                  'credit_ledger', 'events']) as t;
select table_privs_are('public', t, 'authenticated', array['SELECT'],
                       format('authenticated may only select %s', t))
from unnest(array['stores', 'mailbox_state', 'conversations', 'messages', 'replies',
                  'credit_ledger', 'events']) as t;
select table_privs_are('public', t, 'service_role',
                       array['SELECT', 'INSERT', 'UPDATE', 'DELETE'],
                       format('service_role reads and writes %s', t))
from unnest(array['stores', 'mailbox_state', 'conversations', 'messages', 'replies',
                  'credit_ledger']) as t;
select table_privs_are('public', 'events', 'service_role', array['SELECT', 'INSERT'],
                       'service_role may only read and append events');
select sequence_privs_are('public', s, r, '{}', format('%s cannot touch %s', r, s))
from unnest(array['events_id_seq', 'credit_ledger_id_seq']) as s,
     unnest(array['anon', 'authenticated', 'service_role']) as r;

-- anon: nothing at all.
set local role anon;
select throws_ok(format('select count(*) from public.%I', t), '42501', null,
                 format('anon cannot read %s', t))
from unnest(array['stores', 'mailbox_state', 'conversations', 'messages', 'replies',
                  'credit_ledger', 'events']) as t;
reset role;

-- The owner of store A sees exactly store A's rows.
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000a1", "role": "authenticated"}';
select is(pg_temp.visible(t), 1, format('the owner sees its own row of %s only', t))
from unnest(array['stores', 'mailbox_state', 'conversations', 'messages', 'replies',
                  'credit_ledger', 'events']) as t;
select is((select name from public.stores), 'A', 'and it is store A');
select is((select count(*)::int from public.messages
           where store_id = '10000000-0000-4000-8000-00000000000b'), 0,
          'asking for store B by id returns nothing');
select throws_ok($$update public.stores set credits = 1000$$, '42501', null,
                 'the owner cannot change its store (e.g. its credits)');
select throws_ok($$insert into public.events (event_type) values ('message.received')$$, '42501',
                 null, 'the owner cannot write events');
select throws_ok($$delete from public.messages$$, '42501', null, 'the owner cannot delete');
reset role;

-- A signed-in user who owns no store sees nothing.
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000c1", "role": "authenticated"}';
select is(pg_temp.visible(t), 0, format('a stranger sees no row of %s', t))
from unnest(array['stores', 'mailbox_state', 'conversations', 'messages', 'replies',
                  'credit_ledger', 'events']) as t;
reset role;

-- Without a JWT (auth.uid() is null) an authenticated session sees nothing either.
set local role authenticated;
set local request.jwt.claims to '';
select is(pg_temp.visible('stores'), 0, 'no subject, no rows');
reset role;

-- service_role sees and writes everything, but cannot rewrite history.
set local role service_role;
select is(pg_temp.visible(t), 2, format('service_role sees both rows of %s', t))
from unnest(array['stores', 'mailbox_state', 'conversations', 'messages', 'replies',
                  'credit_ledger', 'events']) as t;
select lives_ok($$update public.mailbox_state set last_uid = 11
                  where store_id = '10000000-0000-4000-8000-00000000000b'$$,
                'service_role updates domain rows');
select lives_ok($$insert into public.events (store_id, event_type)
                  values ('10000000-0000-4000-8000-00000000000a', 'job.enqueued')$$,
                'service_role appends events');
select throws_ok($$update public.events set detail = '{"x": 1}'$$, '42501', null,
                 'service_role cannot update events');
select throws_ok($$delete from public.events$$, '42501', null,
                 'service_role cannot delete events');
reset role;

select * from finish();
rollback;
