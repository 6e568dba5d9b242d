-- Ingestion: store once, thread, enqueue one job per new non-skipped message, advance the
-- mailbox position, all through ingest_messages; plus the read helpers and record_events.
-- Runs as service_role, the role the worker uses.
begin;
select plan(68);

insert into public.stores (id, name, support_email, imap_host, imap_port, imap_user, smtp_host,
                           smtp_port, smtp_user, active)
values ('10000000-0000-4000-8000-000000000001', 'Loja', 'help@loja.test', 'imap.loja.test', 993,
        'help', 'smtp.loja.test', 587, 'help', true),
       ('10000000-0000-4000-8000-000000000002', 'Fechada', 'help@fechada.test', 'imap.f.test',
        993, 'help', 'smtp.f.test', 587, 'help', false);
-- This file counts the jobs ingest enqueues; the mailbox's own jobs (a reply's trigger) are
-- proven in mailbox_record_test.sql.
update public.stores set mailbox_sent = 'never', mailbox_drafts = false,
                         mailbox_mark_answered = false;

-- A parsed message as fetch sends it; p_extra overrides or adds fields.
create function pg_temp.msg(p_message_id text, p_uid int, p_from text,
                            p_extra jsonb default '{}')
returns jsonb language sql as $$
  select jsonb_build_object(
    'message_id', p_message_id, 'uid', p_uid, 'from_address', p_from, 'from_name', 'Cliente',
    'reply_to', null, 'to_addresses', jsonb_build_array('help@loja.test'), 'cc_addresses', '[]',
    'subject', 'Pedido ' || p_uid, 'date', '2026-11-20T10:00:00-03:00', 'in_reply_to', null,
    'references', '[]', 'headers', '{}', 'body_text', 'Olá', 'attachments', '[]',
    'size_bytes', 1200, 'skip_reason', null) || p_extra
$$;
create function pg_temp.message(p_message_id text) returns public.messages language sql as $$
  select m.* from public.messages m
  where m.store_id = '10000000-0000-4000-8000-000000000001' and m.message_id = p_message_id
$$;
create function pg_temp.job_for(p_message_id text) returns public.job_queue language sql as $$
  select q.* from public.job_queue q
  where q.idempotency_key = 'email:10000000-0000-4000-8000-000000000001:' || p_message_id
$$;
create function pg_temp.ingest(p_uidvalidity bigint, p_last_uid bigint, p_messages jsonb)
returns jsonb language sql as $$
  select public.ingest_messages('10000000-0000-4000-8000-000000000001', 'INBOX', p_uidvalidity,
                                p_last_uid, p_messages)
$$;
create function pg_temp.store_jobs() returns int language sql as $$
  select count(*)::int from public.job_queue
  where store_id = '10000000-0000-4000-8000-000000000001'
$$;
create function pg_temp.events(p_type text) returns int language sql as $$
  select count(*)::int from public.events
  where store_id = '10000000-0000-4000-8000-000000000001' and event_type = p_type
$$;
grant execute on all functions in schema pg_temp to service_role;

set local role service_role;

-- Read helpers.
select is(array(select s.name from public.list_active_stores() s
                where s.id in ('10000000-0000-4000-8000-000000000001',
                               '10000000-0000-4000-8000-000000000002')),
          array['Loja'], 'list_active_stores leaves inactive stores out');
select is(array(select s.name from public.list_stores() s
                where s.id in ('10000000-0000-4000-8000-000000000001',
                               '10000000-0000-4000-8000-000000000002')),
          array['Loja'], 'list_stores shows active stores by default');
select is((select count(*)::int from public.list_stores(true) s
           where s.id in ('10000000-0000-4000-8000-000000000001',
                          '10000000-0000-4000-8000-000000000002')),
          2, 'list_stores(true) includes inactive stores');
select is((select s.name from public.get_store('10000000-0000-4000-8000-000000000001') s), 'Loja',
          'get_store returns the store');
select is((select count(*)::int from public.get_store('10000000-0000-4000-8000-0000000000ff')), 0,
          'get_store of an unknown id returns no row');
select is((select count(*)::int
           from public.get_mailbox_state('10000000-0000-4000-8000-000000000001', 'INBOX')), 0,
          'a mailbox never fetched has no state');

-- First batch: a new customer email, its follow-up (threaded by References only), an oversized one.
select is(
  pg_temp.ingest(7, 3, jsonb_build_array(
    pg_temp.msg('<m1@cliente.test>', 1, 'Ana@Cliente.TEST', jsonb_build_object(
      'to_addresses', jsonb_build_array('Help@Loja.TEST'),
      'headers', jsonb_build_object('Auto-Submitted', 'no', 'x-loop', 'x'))),
    pg_temp.msg('<m2@cliente.test>', 2, 'ana@cliente.test', jsonb_build_object(
      'references', jsonb_build_array('<unknown@elsewhere.test>', '<m1@cliente.test>'),
      'date', 'not a date')),
    pg_temp.msg('<m3@cliente.test>', 3, 'bob@cliente.test', jsonb_build_object(
      'skip_reason', 'oversized', 'size_bytes', 30000000, 'body_text', null))
  )) - 'job_ids',
  '{"stored": 2, "duplicates": 0, "skipped": 1, "own_copies": 0, "last_uid": 3}'::jsonb,
  'first batch: two stored for processing, one skipped');
select is((select count(*)::int from public.messages
           where store_id = '10000000-0000-4000-8000-000000000001'), 3,
          'all three messages are stored');
select is((pg_temp.message('<m2@cliente.test>')).conversation_id,
          (pg_temp.message('<m1@cliente.test>')).conversation_id,
          'the follow-up is threaded by References into the first conversation');
select isnt((pg_temp.message('<m3@cliente.test>')).conversation_id,
            (pg_temp.message('<m1@cliente.test>')).conversation_id,
            'another customer starts another conversation');
select is((select row(c.customer_email, c.subject)::text from public.conversations c
           where c.id = (pg_temp.message('<m1@cliente.test>')).conversation_id),
          row('ana@cliente.test', 'Pedido 1')::text,
          'the conversation records its customer and subject');

-- Normalisation of what fetch sends.
select is((pg_temp.message('<m1@cliente.test>')).from_address, 'ana@cliente.test',
          'from_address is lower-cased');
select is((pg_temp.message('<m1@cliente.test>')).to_addresses, array['help@loja.test'],
          'to_addresses are lower-cased');
select is((pg_temp.message('<m1@cliente.test>')).headers,
          '{"auto-submitted": "no", "x-loop": "x"}'::jsonb, 'header names are lower-cased');
select is((pg_temp.message('<m1@cliente.test>')).sent_at, '2026-11-20 13:00:00+00'::timestamptz,
          'the ISO date is parsed');
select is((pg_temp.message('<m2@cliente.test>')).sent_at, null,
          'a malformed date is dropped, not fatal');
select is((pg_temp.message('<m2@cliente.test>'))."references",
          array['<unknown@elsewhere.test>', '<m1@cliente.test>'], 'references are kept in order');
select is(row((pg_temp.message('<m1@cliente.test>')).imap_folder,
              (pg_temp.message('<m1@cliente.test>')).imap_uid)::text,
          row('INBOX', 1)::text, 'folder and UID are recorded');

-- Jobs: one per new non-skipped message, with the designed key and payload.
select is(pg_temp.store_jobs(), 2, 'two jobs were enqueued');
select is(row((pg_temp.job_for('<m1@cliente.test>')).job_type,
              (pg_temp.job_for('<m1@cliente.test>')).payload,
              (pg_temp.job_for('<m1@cliente.test>')).store_id,
              (pg_temp.job_for('<m1@cliente.test>')).conversation_id)::text,
          row('process_email',
              jsonb_build_object('message_id', (pg_temp.message('<m1@cliente.test>')).id),
              '10000000-0000-4000-8000-000000000001'::uuid,
              (pg_temp.message('<m1@cliente.test>')).conversation_id)::text,
          'the job carries the message id, store and conversation keys');
select is((pg_temp.job_for('<m3@cliente.test>')).id, null, 'the skipped message has no job');
select is(pg_temp.events('message.received'), 3, 'a message.received event per stored message');
select is((select e.detail ->> 'reason' from public.events e
           where e.event_type = 'message.skipped'
             and e.message_id = (pg_temp.message('<m3@cliente.test>')).id),
          'oversized', 'message.skipped records the reason');
select is((select row(uidvalidity, last_uid)::text
           from public.get_mailbox_state('10000000-0000-4000-8000-000000000001', 'INBOX')),
          row(7, 3)::text, 'the mailbox position is stored');

-- A reply of ours, then mail that answers it (In-Reply-To our Message-ID).
reset role;
insert into public.replies (store_id, conversation_id, message_id, to_address, smtp_message_id,
                            status, sending_at, sent_at)
select store_id, conversation_id, id, 'ana@cliente.test', '<reply-1@loja.test>', 'sent', now(),
       now()
from pg_temp.message('<m1@cliente.test>');
set local role service_role;

select is(
  pg_temp.ingest(7, 2, jsonb_build_array(
    pg_temp.msg('<m1@cliente.test>', 1, 'ana@cliente.test'),
    pg_temp.msg('<m4@cliente.test>', 4, 'ana@cliente.test',
                jsonb_build_object('in_reply_to', '<reply-1@loja.test>')),
    pg_temp.msg('<m5@cliente.test>', 5, 'mallory@evil.test',
                jsonb_build_object('in_reply_to', '<m1@cliente.test>',
                                   'references', jsonb_build_array('<reply-1@loja.test>')))
  )) - 'job_ids',
  '{"stored": 2, "duplicates": 1, "skipped": 0, "own_copies": 0, "last_uid": 3}'::jsonb,
  'second batch: the redelivered message is a duplicate');
select is((pg_temp.message('<m4@cliente.test>')).conversation_id,
          (pg_temp.message('<m1@cliente.test>')).conversation_id,
          'an answer to our reply is threaded by In-Reply-To into its conversation');
select isnt((pg_temp.message('<m5@cliente.test>')).conversation_id,
            (pg_temp.message('<m1@cliente.test>')).conversation_id,
            'a stranger quoting the Message-IDs is not attached to that conversation');
select is(pg_temp.store_jobs(), 4, 'the duplicate enqueued nothing');
select is(pg_temp.events('message.duplicate'), 1, 'a message.duplicate event');
select is((select e.message_id from public.events e
           where e.store_id = '10000000-0000-4000-8000-000000000001'
             and e.event_type = 'message.duplicate'),
          (pg_temp.message('<m1@cliente.test>')).id,
          'the duplicate event points at the stored message');
select is((select last_uid
           from public.get_mailbox_state('10000000-0000-4000-8000-000000000001', 'INBOX')),
          3::bigint, 'same UIDVALIDITY: last_uid never goes back');
select ok((select c.last_message_at from public.conversations c
           where c.id = (pg_temp.message('<m1@cliente.test>')).conversation_id) is not null,
          'the conversation keeps a last_message_at');

-- UIDVALIDITY changes: the position restarts; re-fetched messages dedupe by Message-ID.
select is(pg_temp.ingest(8, 0, '[]') ->> 'last_uid', '0',
          'a new UIDVALIDITY resets last_uid to what the run reached');
select is((select row(uidvalidity, last_uid)::text
           from public.get_mailbox_state('10000000-0000-4000-8000-000000000001', 'INBOX')),
          row(8, 0)::text, 'the new UIDVALIDITY is stored');
select is(
  pg_temp.ingest(8, 5, jsonb_build_array(
    pg_temp.msg('<m1@cliente.test>', 1, 'ana@cliente.test'),
    pg_temp.msg('<m2@cliente.test>', 2, 'ana@cliente.test'),
    pg_temp.msg('<m3@cliente.test>', 3, 'bob@cliente.test'),
    pg_temp.msg('<m4@cliente.test>', 4, 'ana@cliente.test'),
    pg_temp.msg('<m5@cliente.test>', 5, 'mallory@evil.test')
  )),
  '{"stored": 0, "duplicates": 5, "skipped": 0, "own_copies": 0, "job_ids": [], "last_uid": 5}'::jsonb,
  'the resynchronised folder stores and enqueues nothing again');
select is(pg_temp.store_jobs(), 4, 'still four jobs');
select is((select count(*)::int from public.messages
           where store_id = '10000000-0000-4000-8000-000000000001'), 5, 'still five messages');

-- The same message twice in one batch; folders are independent.
select is(
  public.ingest_messages('10000000-0000-4000-8000-000000000001', 'Spam', 1, 2,
                         jsonb_build_array(pg_temp.msg('<m6@cliente.test>', 1, 'c@cliente.test'),
                                           pg_temp.msg('<m6@cliente.test>', 2, 'c@cliente.test')))
    - 'job_ids',
  '{"stored": 1, "duplicates": 1, "skipped": 0, "own_copies": 0, "last_uid": 2}'::jsonb,
  'a message repeated within one batch is stored once');
select is((select count(*)::int from public.mailbox_state
           where store_id = '10000000-0000-4000-8000-000000000001'), 2,
          'each folder has its own position');
select is((select row(imap_folder, imap_uid)::text from pg_temp.message('<m6@cliente.test>')),
          row('Spam', 1)::text, 'the first copy wins');

-- The job ids returned are the jobs enqueued.
select is(
  (select array_agg(j.value::uuid) from jsonb_array_elements_text(
     pg_temp.ingest(8, 6, jsonb_build_array(pg_temp.msg('<m7@cliente.test>', 6, 'd@c.test')))
     -> 'job_ids') as j),
  array[(pg_temp.job_for('<m7@cliente.test>')).id], 'job_ids lists the enqueued jobs');

-- Within one batch a reply to an earlier message of the batch is threaded to it.
select lives_ok($$select pg_temp.ingest(8, 8, jsonb_build_array(
                    pg_temp.msg('<m8@cliente.test>', 7, 'e@c.test'),
                    pg_temp.msg('<m9@cliente.test>', 8, 'e@c.test',
                                jsonb_build_object('in_reply_to', '<m8@cliente.test>'))))$$,
                'a batch with a message and its answer');
select is((pg_temp.message('<m9@cliente.test>')).conversation_id,
          (pg_temp.message('<m8@cliente.test>')).conversation_id,
          'threading sees earlier messages of the same batch');

-- A Message-ID too long for the index is stored under a stable digest, so it still dedupes.
select is(pg_temp.ingest(8, 9, jsonb_build_array(
            pg_temp.msg('<' || repeat('x', 3000) || '@c.test>', 9, 'f@c.test'))) ->> 'stored',
          '1', 'an overlong Message-ID is stored');
select is(pg_temp.ingest(8, 9, jsonb_build_array(
            pg_temp.msg('<' || repeat('x', 3000) || '@c.test>', 9, 'f@c.test'))) ->> 'duplicates',
          '1', 'and recognised when delivered again');
select ok((select bool_and(length(message_id) <= 998) from public.messages
           where store_id = '10000000-0000-4000-8000-000000000001'),
          'every stored Message-ID fits the index');

-- A reused Message-ID with another sender or other text is stored and flagged, never dropped:
-- a forged copy must not pre-empt the real email (or the real one the forgery).
create function pg_temp.conflicts() returns int language sql as $$
  select count(*)::int from public.events e
  where e.store_id = '10000000-0000-4000-8000-000000000001'
    and e.event_type = 'message.conflicting_id'
$$;
grant execute on function pg_temp.conflicts() to service_role;
select is(pg_temp.ingest(8, 9, jsonb_build_array(
            pg_temp.msg('<m7@cliente.test>', 9, 'mallory@evil.test',
                        '{"body_text": "Mande o reembolso para outra conta"}'))) - 'job_ids',
          '{"stored": 1, "duplicates": 0, "skipped": 0, "own_copies": 0, "last_uid": 9}'::jsonb,
          'another sender reusing a stored Message-ID: stored, not a duplicate');
select is(pg_temp.conflicts(), 1, 'a message.conflicting_id event flags it');
select is((select e.detail ->> 'conflicts_with' from public.events e
           where e.store_id = '10000000-0000-4000-8000-000000000001'
             and e.event_type = 'message.conflicting_id'),
          (pg_temp.message('<m7@cliente.test>')).id::text,
          'the flag names the message it conflicts with');
select is((select count(*)::int from public.messages m
           where m.store_id = '10000000-0000-4000-8000-000000000001'
             and m.message_id like '<m7@cliente.test>#conflict-%'
             and m.from_address = 'mallory@evil.test'), 1,
          'the conflicting copy has its own row under a derived key');
select is((select m.headers ->> 'message-id' from public.messages m
           where m.store_id = '10000000-0000-4000-8000-000000000001'
             and m.message_id like '<m7@cliente.test>#conflict-%'), '<m7@cliente.test>',
          'and keeps its real Message-ID for threading the reply');
select is((select count(*)::int from public.job_queue q
           where q.store_id = '10000000-0000-4000-8000-000000000001'
             and q.idempotency_key like 'email:%:<m7@cliente.test>#conflict-%'), 1,
          'and its own job: it is processed like any other email');
select is(pg_temp.ingest(8, 9, jsonb_build_array(
            pg_temp.msg('<m7@cliente.test>', 9, 'mallory@evil.test',
                        '{"body_text": "Mande o reembolso para outra conta"}'))) ->> 'duplicates',
          '1', 'a redelivery of the conflicting copy is a duplicate of it');
select is(pg_temp.ingest(8, 9, jsonb_build_array(
            pg_temp.msg('<m7@cliente.test>', 9, 'd@c.test',
                        '{"body_text": "Outro texto"}'))) ->> 'stored',
          '1', 'the same sender with other text is a conflicting copy too');
select is(pg_temp.ingest(8, 9, jsonb_build_array(
            pg_temp.msg('<m7@cliente.test>', 9, 'D@C.test',
                        '{"subject": "Fwd: Pedido"}'))) ->> 'duplicates',
          '1', 'the same sender and text is a true redelivery (case and subject aside)');
select is(pg_temp.conflicts(), 2, 'two conflicting copies flagged in all');

-- Bad calls fail loudly and change nothing.
select throws_ok($$select pg_temp.ingest(8, 10, '{"message_id": "<x@c.test>"}')$$, '22023', null,
                 'p_messages must be an array');
select throws_ok($$select pg_temp.ingest(8, 10, jsonb_build_array(
                     pg_temp.msg('', 10, 'g@c.test')))$$, '22023', null,
                 'a message without Message-ID is refused');
select throws_ok($$select pg_temp.ingest(null, 10, '[]')$$, '22023', null,
                 'uidvalidity is required');
select throws_ok($$select public.ingest_messages('10000000-0000-4000-8000-0000000000ff', 'INBOX',
                                                 1, 1, '[]')$$,
                 'P0002', null, 'an unknown store is refused');
select is((select last_uid
           from public.get_mailbox_state('10000000-0000-4000-8000-000000000001', 'INBOX')),
          9::bigint, 'failed calls did not move the position');

-- record_events: the worker's step events, in one call.
select is(public.record_events(jsonb_build_array(
            jsonb_build_object('store_id', '10000000-0000-4000-8000-000000000001',
                               'job_id', '50000000-0000-4000-8000-000000000001',
                               'event_type', 'process.validated', 'detail', '{"ok": true}'::jsonb),
            jsonb_build_object('store_id', '10000000-0000-4000-8000-000000000001',
                               'event_type', 'process.classified'))),
          2, 'record_events returns how many it wrote');
select is((select detail from public.events
           where job_id = '50000000-0000-4000-8000-000000000001'),
          '{"ok": true}'::jsonb, 'with their detail');
select is((select detail from public.events
           where store_id = '10000000-0000-4000-8000-000000000001'
             and event_type = 'process.classified'),
          '{}'::jsonb, 'a missing detail is an empty object');
select is(public.record_events('[]'), 0, 'an empty list writes nothing');
select throws_ok($$select public.record_events('[{"event_type": "Bad Type"}]')$$, '23514', null,
                 'a malformed event type is refused');
select throws_ok($$select public.record_events('{}')$$, '22023', null,
                 'p_events must be an array');
select throws_ok($$select public.record_events('[{"event_type": "a.b", "job_id": "nope"}]')$$,
                 '22P02', null, 'a malformed id is refused');

select * from finish();
rollback;
