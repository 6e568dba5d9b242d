-- The store's knowledge (issue 15): who reads and who edits (RLS and the console actions), the
-- service functions the CLI uses (save by title, bounds, an import that is all or nothing), and
-- what load_job_context hands the worker: the conversation's thread and the store's entries,
-- never another conversation's or another store's.
begin;
select plan(44);

insert into auth.users (id, email) values
  ('00000000-0000-4000-8000-0000000000a1', 'owner-a@example.test'),
  ('00000000-0000-4000-8000-0000000000a2', 'agent-a@example.test'),
  ('00000000-0000-4000-8000-0000000000b1', 'owner-b@example.test'),
  ('00000000-0000-4000-8000-0000000000c1', 'stranger@example.test');
insert into public.stores (id, owner_id, name, support_email, imap_host, imap_port, imap_user,
                           smtp_host, smtp_port, smtp_user, credits)
values
  ('10000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-0000000000a1', 'A',
   'help@a.test', 'imap.a.test', 993, 'help', 'smtp.a.test', 587, 'help', 10),
  ('10000000-0000-4000-8000-00000000000b', '00000000-0000-4000-8000-0000000000b1', 'B',
   'help@b.test', 'imap.b.test', 993, 'help', 'smtp.b.test', 587, 'help', 10);
select public.add_store_member('10000000-0000-4000-8000-00000000000a', 'agent-a@example.test',
                               'agent');

create temp table ids (name text primary key, id uuid);
grant all on ids to service_role, authenticated;

-- The service functions (the CLI) -------------------------------------------------------------
set local role service_role;
insert into ids select 'a-returns', (public.save_knowledge('10000000-0000-4000-8000-00000000000a',
  '{"topic": "returns", "title": "Trocas", "body": "Trocas em até 30 dias."}',
  '{"via": "cli"}')).id;
insert into ids select 'b-returns', (public.save_knowledge('10000000-0000-4000-8000-00000000000b',
  '{"topic": "returns", "title": "Returns", "body": "Store B takes returns within 7 days."}')).id;
select is((public.save_knowledge('10000000-0000-4000-8000-00000000000a',
  '{"topic": "returns", "title": " Trocas ", "body": "Trocas e devoluções em até 30 dias."}')).id,
  (select id from ids where name = 'a-returns'),
  'saving the same title again replaces that entry (an import twice changes nothing)');
select is((select body from public.store_knowledge where id = (select id from ids
                                                            where name = 'a-returns')),
          'Trocas e devoluções em até 30 dias.', 'with the new text');
select throws_ok($$select public.save_knowledge('10000000-0000-4000-8000-00000000000a',
                   '{"topic": "weather", "title": "x", "body": "y"}')$$,
                 'PT400', null, 'an unknown topic is refused');
select throws_ok($$select public.save_knowledge('10000000-0000-4000-8000-00000000000a',
                   '{"topic": "faq", "title": "x", "body": "   "}')$$,
                 'PT400', null, 'an empty text is refused');
select throws_ok($$select public.save_knowledge('10000000-0000-4000-8000-00000000000a',
                   jsonb_build_object('topic', 'faq', 'title', 'x', 'body', repeat('y', 4001)))$$,
                 'PT400', null, 'a text over 4,000 characters is refused');
select throws_ok(format($$select public.save_knowledge('10000000-0000-4000-8000-00000000000a',
                   '{"id": "%s", "topic": "faq", "title": "Hijack", "body": "x"}')$$,
                        (select id from ids where name = 'b-returns')),
                 'PT404', null, 'an id of another store''s entry is not found in this one');
select throws_ok(format($$select public.save_knowledge('10000000-0000-4000-8000-00000000000a',
                   '{"id": "%s", "topic": "returns", "title": "Frete", "body": "x"}')$$,
                        (select id from ids where name = 'a-returns')),
                 'PT409', null, 'renaming an entry to another entry''s title is refused')
from (select public.save_knowledge('10000000-0000-4000-8000-00000000000a',
        '{"topic": "shipping", "title": "Frete", "body": "Frete grátis."}')) s;
select throws_ok($$select public.save_knowledge('10000000-0000-4000-8000-0000000000ff',
                   '{"topic": "faq", "title": "x", "body": "y"}')$$,
                 'PT404', null, 'an unknown store is refused');
select is((select body from public.store_knowledge where id = (select id from ids
                                                            where name = 'b-returns')),
          'Store B takes returns within 7 days.', 'store B''s entry is untouched');

select is(public.import_knowledge('10000000-0000-4000-8000-00000000000a',
  '[{"topic": "shipping", "title": "Frete", "body": "Frete grátis acima de R$ 299."},
    {"topic": "payment", "title": "Pagamento", "body": "Pix e cartão."}]'),
  '{"saved": 2, "removed": 0}', 'an import saves every entry');
select throws_ok($$select public.import_knowledge('10000000-0000-4000-8000-00000000000a',
  '[{"topic": "faq", "title": "Good", "body": "fine"},
    {"topic": "nope", "title": "Bad", "body": "x"}]', true)$$,
  'PT400', null, 'an import with one bad entry fails');
select is((select array_agg(title order by title) from public.store_knowledge
           where store_id = '10000000-0000-4000-8000-00000000000a'),
          array['Frete', 'Pagamento', 'Trocas'], 'and changed nothing, nor removed anything');
select is(public.import_knowledge('10000000-0000-4000-8000-00000000000a',
  '[{"topic": "shipping", "title": "Frete", "body": "Frete grátis acima de R$ 299."},
    {"topic": "returns", "title": "Trocas", "body": "Trocas e devoluções em até 30 dias."}]',
  true),
  '{"saved": 2, "removed": 1}', 'an import with replace removes the entries it does not have');
select is(public.list_knowledge('10000000-0000-4000-8000-00000000000a') -> 0 ->> 'title',
          'Trocas', 'list_knowledge orders by topic, then title (returns before shipping)');
select is(jsonb_array_length(public.list_knowledge('10000000-0000-4000-8000-00000000000a')), 2,
          'and lists only the store''s own');
select is(public.remove_knowledge('10000000-0000-4000-8000-00000000000a',
                                  (select id from ids where name = 'b-returns')), false,
          'remove_knowledge does not reach another store''s entry');
select ok(exists (select 1 from public.events
                  where store_id = '10000000-0000-4000-8000-00000000000a'
                    and event_type = 'knowledge.saved' and detail -> 'by' ->> 'via' = 'cli'),
          'saves are recorded as knowledge.saved events with who did it');
reset role;

-- At most 200 entries a store.
insert into public.store_knowledge (store_id, topic, title, body)
select '10000000-0000-4000-8000-00000000000b', 'faq', 'Q' || i, 'A' || i
from generate_series(1, 199) i;
select throws_ok($$select public.save_knowledge('10000000-0000-4000-8000-00000000000b',
                   '{"topic": "faq", "title": "One too many", "body": "x"}')$$,
                 'PT409', null, 'the 201st entry is refused');
select lives_ok($$select public.save_knowledge('10000000-0000-4000-8000-00000000000b',
                  '{"topic": "faq", "title": "Q1", "body": "changed"}')$$,
                'a full store can still change an entry by title');
delete from public.store_knowledge
where store_id = '10000000-0000-4000-8000-00000000000b' and title like 'Q%';

-- Privileges -----------------------------------------------------------------------------------
select ok(not has_function_privilege('authenticated',
            'public.save_knowledge(uuid, jsonb, jsonb)', 'execute'),
          'a signed-in person cannot call the service functions');
select ok(not has_function_privilege('anon', 'public.console_knowledge(uuid)', 'execute'),
          'anon calls nothing');
select ok(not has_table_privilege('anon', 'public.store_knowledge', 'select'),
          'anon reads nothing');

-- The agent of store A: reads A's entries, changes nothing --------------------------------------
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000a2", "role": "authenticated",
    "email": "agent-a@example.test"}';
select is((select count(*)::int from public.store_knowledge), 2, 'the agent sees A''s entries');
select is(jsonb_array_length(public.console_knowledge('10000000-0000-4000-8000-00000000000a')
                             -> 'entries'), 2, 'console_knowledge lists them');
select is(public.console_knowledge('10000000-0000-4000-8000-00000000000a') #>> '{store,role}',
          'agent', 'with the caller''s role');
select is(public.console_knowledge('10000000-0000-4000-8000-00000000000b'), null,
          'store B''s knowledge page is invisible');
select throws_ok($$select public.console_save_knowledge('10000000-0000-4000-8000-00000000000a',
                   '{"topic": "faq", "title": "Agent", "body": "x"}')$$,
                 '42501', null, 'an agent may not add an entry');
select throws_ok(format($$select public.console_delete_knowledge('%s')$$,
                        (select id from ids where name = 'a-returns')),
                 '42501', null, 'nor delete one');
select throws_ok($$insert into public.store_knowledge (store_id, topic, title, body)
                   values ('10000000-0000-4000-8000-00000000000a', 'faq', 'Direct', 'x')$$,
                 '42501', null, 'nor write the table directly (RLS)');
update public.store_knowledge set body = 'agent edit';
select is((select count(*)::int from public.store_knowledge where body = 'agent edit'), 0,
          'an agent''s direct update changes no row');
reset role;

-- The owner of store A: edits A, not B --------------------------------------------------------
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000a1", "role": "authenticated",
    "email": "owner-a@example.test"}';
insert into ids select 'a-hours', (public.console_save_knowledge(
  '10000000-0000-4000-8000-00000000000a',
  '{"topic": "contact", "title": "Horário", "body": "Seg a sex, 9h às 18h."}') ->> 'id')::uuid;
select is((select updated_by from public.store_knowledge
           where id = (select id from ids where name = 'a-hours')),
          'owner-a@example.test', 'an owner adds an entry, signed with their email');
select is(public.console_save_knowledge('10000000-0000-4000-8000-00000000000a',
  jsonb_build_object('id', (select id from ids where name = 'a-hours'), 'topic', 'contact',
                     'title', 'Horário de atendimento', 'body', 'Seg a sex, 9h às 18h.'))
          ->> 'title', 'Horário de atendimento', 'and edits it by id');
select throws_ok($$select public.console_save_knowledge('10000000-0000-4000-8000-00000000000b',
                   '{"topic": "faq", "title": "Mine now", "body": "x"}')$$,
                 '42501', null, 'an owner of A may not add to B');
select throws_ok(format($$select public.console_delete_knowledge('%s')$$,
                        (select id from ids where name = 'b-returns')),
                 '42501', null, 'nor delete B''s entry');
select throws_ok($$select public.console_delete_knowledge('70000000-0000-4000-8000-0000000000ff')$$,
                 'PT404', null, 'an unknown entry is not found');
select throws_ok($$insert into public.store_knowledge (store_id, topic, title, body)
                   values ('10000000-0000-4000-8000-00000000000b', 'faq', 'Direct', 'x')$$,
                 '42501', null, 'nor insert into B directly (RLS)');
select is(public.console_delete_knowledge((select id from ids where name = 'a-hours')), true,
          'an owner deletes an entry of their store');
reset role;

-- A stranger -------------------------------------------------------------------------------------
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000c1", "role": "authenticated",
    "email": "stranger@example.test"}';
select is((select count(*)::int from public.store_knowledge), 0, 'a stranger sees no entry');
select is(public.console_knowledge('10000000-0000-4000-8000-00000000000a'), null,
          'nor a store''s knowledge page');
select throws_ok($$select public.console_save_knowledge('10000000-0000-4000-8000-00000000000a',
                   '{"topic": "faq", "title": "x", "body": "y"}')$$,
                 '42501', null, 'and cannot add');
reset role;

-- load_job_context: the thread and the knowledge --------------------------------------------------
insert into public.conversations (id, store_id, customer_email, subject) values
  ('20000000-0000-4000-8000-0000000000a1', '10000000-0000-4000-8000-00000000000a', 'ana@c.test',
   'Troca'),
  ('20000000-0000-4000-8000-0000000000a2', '10000000-0000-4000-8000-00000000000a', 'ana@c.test',
   'Other conversation');
insert into public.messages (id, store_id, conversation_id, message_id, from_address, subject,
                             body_text, received_at, skip_reason) values
  ('30000000-0000-4000-8000-0000000000a1', '10000000-0000-4000-8000-00000000000a',
   '20000000-0000-4000-8000-0000000000a1', '<a1@c.test>', 'ana@c.test', 'Troca',
   'Quero trocar a camiseta.', now() - interval '3 hours', null),
  ('30000000-0000-4000-8000-0000000000a0', '10000000-0000-4000-8000-00000000000a',
   '20000000-0000-4000-8000-0000000000a1', '<a0@c.test>', 'ana@c.test', 'Auto',
   'Out of office', now() - interval '150 minutes', 'auto_reply'),
  ('30000000-0000-4000-8000-0000000000a2', '10000000-0000-4000-8000-00000000000a',
   '20000000-0000-4000-8000-0000000000a1', '<a2@c.test>', 'ana@c.test', 'Re: Troca',
   'E a troca?', now() - interval '1 hour', null),
  ('30000000-0000-4000-8000-0000000000a3', '10000000-0000-4000-8000-00000000000a',
   '20000000-0000-4000-8000-0000000000a1', '<a3@c.test>', 'ana@c.test', 'Re: Troca',
   'Later message', now(), null),
  ('30000000-0000-4000-8000-0000000000a9', '10000000-0000-4000-8000-00000000000a',
   '20000000-0000-4000-8000-0000000000a2', '<a9@c.test>', 'ana@c.test', 'Other',
   'Another conversation', now() - interval '2 hours', null);
insert into public.replies (store_id, conversation_id, message_id, status, to_address,
                            body_text, smtp_message_id, sending_at, sent_at) values
  ('10000000-0000-4000-8000-00000000000a', '20000000-0000-4000-8000-0000000000a1',
   '30000000-0000-4000-8000-0000000000a1', 'sent', 'ana@c.test', 'A troca é grátis.',
   '<r1@a.test>', now() - interval '2 hours', now() - interval '2 hours'),
  ('10000000-0000-4000-8000-00000000000a', '20000000-0000-4000-8000-0000000000a1',
   '30000000-0000-4000-8000-0000000000a3', 'held', 'ana@c.test', 'Held draft',
   '<r3@a.test>', null, null),
  ('10000000-0000-4000-8000-00000000000a', '20000000-0000-4000-8000-0000000000a2',
   '30000000-0000-4000-8000-0000000000a9', 'sent', 'ana@c.test', 'Other conversation reply',
   '<r9@a.test>', now() - interval '90 minutes', now() - interval '90 minutes');
-- A reply a person wrote in the console (to the skipped message) is part of the thread too.
insert into public.replies (store_id, conversation_id, message_id, status, to_address, body_text,
                            smtp_message_id, sending_at, sent_at, author_id, author_email) values
  ('10000000-0000-4000-8000-00000000000a', '20000000-0000-4000-8000-0000000000a1',
   '30000000-0000-4000-8000-0000000000a0', 'sent', 'ana@c.test', 'Written by a person.',
   '<r0@a.test>', now() - interval '100 minutes', now() - interval '100 minutes',
   '00000000-0000-4000-8000-0000000000a1', 'owner-a@example.test');
insert into public.job_queue (id, job_type, store_id, conversation_id, payload) values
  ('40000000-0000-4000-8000-0000000000a2', 'process_email', '10000000-0000-4000-8000-00000000000a',
   '20000000-0000-4000-8000-0000000000a1',
   '{"message_id": "30000000-0000-4000-8000-0000000000a2"}');

set local role service_role;
select is(
  (select jsonb_agg(jsonb_build_array(t ->> 'author', t ->> 'text'))
   from jsonb_array_elements(public.load_job_context('40000000-0000-4000-8000-0000000000a2')
                             -> 'thread') t),
  '[["customer", "Quero trocar a camiseta."], ["store", "A troca é grátis."],
    ["store", "Written by a person."]]'::jsonb,
  'the thread: the earlier message and the replies that went out (automatic and a person''s), '
  'oldest first; not the message itself, a later one, a skipped one, a held draft, nor another '
  'conversation''s message or reply');
select is(
  (select jsonb_agg(k ->> 'title' order by k ->> 'title')
   from jsonb_array_elements(public.load_job_context('40000000-0000-4000-8000-0000000000a2')
                             -> 'knowledge') k),
  '["Frete", "Trocas"]'::jsonb, 'the knowledge: the store''s own entries, not store B''s');
select is(public.load_job_context('40000000-0000-4000-8000-0000000000a2')
            -> 'knowledge' -> 0 ->> 'body',
          'Trocas e devoluções em até 30 dias.', 'with their text');
update public.messages set body_text = repeat('x', 5000)
where id = '30000000-0000-4000-8000-0000000000a1';
select is(length(public.load_job_context('40000000-0000-4000-8000-0000000000a2')
                 -> 'thread' -> 0 ->> 'text'), 3000, 'a long earlier message is cut in SQL');

select * from finish();
rollback;
