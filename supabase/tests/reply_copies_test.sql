-- A reply's own copy (issue 16 item 2, decision 0017): ingest_messages recognises it by its
-- Message-ID and sender, stores nothing, enqueues nothing, and confirm_reply_by_copy turns a
-- reply left `sending` or held `delivery_in_doubt` into `sent`. Runs as service_role.
begin;
select plan(22);

insert into public.stores (id, name, support_email, imap_host, imap_port, imap_user, smtp_host,
                           smtp_port, smtp_user, active)
values ('20000000-0000-4000-8000-000000000001', 'Loja', 'help@loja.test', 'imap.loja.test', 993,
        'help', 'smtp.loja.test', 587, 'help', true),
       ('20000000-0000-4000-8000-000000000002', 'Outra', 'help@outra.test', 'imap.o.test', 993,
        'help', 'smtp.o.test', 587, 'help', true);

create function pg_temp.msg(p_message_id text, p_uid int, p_from text)
returns jsonb language sql as $$
  select jsonb_build_object(
    'message_id', p_message_id, 'uid', p_uid, 'from_address', p_from, 'from_name', 'X',
    'to_addresses', jsonb_build_array('cliente@example.com'), 'subject', 'Re: Pedido',
    'body_text', 'Olá', 'size_bytes', 900)
$$;
create function pg_temp.ingest(p_last_uid bigint, p_messages jsonb)
returns jsonb language sql as $$
  select public.ingest_messages('20000000-0000-4000-8000-000000000001', 'INBOX', 1, p_last_uid,
                                p_messages)
$$;
create function pg_temp.reply(p_smtp_id text) returns public.replies language sql as $$
  select r.* from public.replies r where r.smtp_message_id = p_smtp_id
$$;
create function pg_temp.events(p_type text) returns int language sql as $$
  select count(*)::int from public.events
  where store_id = '20000000-0000-4000-8000-000000000001' and event_type = p_type
$$;
grant execute on all functions in schema pg_temp to service_role;

-- Four customer emails, each with a reply in a different state.
select pg_temp.ingest(4, jsonb_build_array(
  pg_temp.msg('<c1@example.com>', 1, 'cliente@example.com'),
  pg_temp.msg('<c2@example.com>', 2, 'cliente@example.com'),
  pg_temp.msg('<c3@example.com>', 3, 'cliente@example.com'),
  pg_temp.msg('<c4@example.com>', 4, 'cliente@example.com')));
insert into public.replies (store_id, conversation_id, message_id, status, to_address,
                            smtp_message_id, hold_reason, sending_at)
select m.store_id, m.conversation_id, m.id, v.status, 'cliente@example.com', v.smtp_id,
       v.hold_reason, case when v.status <> 'drafted' then now() end
from (values ('<c1@example.com>', 'sending', '<reply-1@loja.test>', null),
             ('<c2@example.com>', 'held', '<reply-2@loja.test>', 'delivery_in_doubt'),
             ('<c3@example.com>', 'held', '<reply-3@loja.test>', 'needs_human'),
             ('<c4@example.com>', 'drafted', '<reply-4@loja.test>', null))
       as v(message_id, status, smtp_id, hold_reason)
join public.messages m on m.message_id = v.message_id
 and m.store_id = '20000000-0000-4000-8000-000000000001';

set local role service_role;

-- A copy of the reply left `sending`.
select is(pg_temp.ingest(5, jsonb_build_array(
            pg_temp.msg('<reply-1@loja.test>', 5, 'help@loja.test'))),
          '{"stored": 0, "duplicates": 0, "skipped": 0, "own_copies": 1, "job_ids": [],
            "last_uid": 5}'::jsonb,
          'a reply''s own copy is counted, not stored, and gets no job');
select is((pg_temp.reply('<reply-1@loja.test>')).status, 'sent', 'its reply becomes sent');
select isnt((pg_temp.reply('<reply-1@loja.test>')).sent_at, null, 'with a sent_at');
select is((select count(*)::int from public.messages where message_id = '<reply-1@loja.test>'),
          0, 'the copy is not a stored message');
select is((select count(*)::int from public.conversations
           where store_id = '20000000-0000-4000-8000-000000000001'
             and customer_email = 'help@loja.test'),
          0, 'the copy opens no conversation');
select is(pg_temp.events('reply.confirmed_by_copy'), 1, 'reply.confirmed_by_copy is recorded');
select is((select detail ->> 'previous_status' from public.events
           where event_type = 'reply.confirmed_by_copy'
             and store_id = '20000000-0000-4000-8000-000000000001'),
          'sending', 'the event says what the reply was');
select is(pg_temp.events('message.own_copy'), 1, 'the copy is noted where it was read');
select is((select (detail ->> 'uid')::int from public.events
           where event_type = 'message.own_copy'
             and store_id = '20000000-0000-4000-8000-000000000001'),
          5, 'with its UID');

-- A copy of a reply held as in doubt.
select is((pg_temp.ingest(6, jsonb_build_array(
             pg_temp.msg('<reply-2@loja.test>', 6, 'help@loja.test'))) ->> 'own_copies')::int,
          1, 'a held reply''s copy is recognised');
select is((pg_temp.reply('<reply-2@loja.test>')).status, 'sent',
          'a reply held as delivery_in_doubt becomes sent');
select is((pg_temp.reply('<reply-2@loja.test>')).hold_reason, null, 'and is no longer held');

-- Held for another reason: never handed to SMTP, left for the person who holds it.
select is((pg_temp.ingest(7, jsonb_build_array(
             pg_temp.msg('<reply-3@loja.test>', 7, 'help@loja.test'))) ->> 'own_copies')::int,
          1, 'a copy of a reply held for review is still not stored');
select is((pg_temp.reply('<reply-3@loja.test>')).status, 'held',
          'a reply held for another reason stays held');

-- The same copy read again (a crash before the UID moved) changes nothing.
select is((pg_temp.ingest(8, jsonb_build_array(
             pg_temp.msg('<reply-1@loja.test>', 8, 'help@loja.test'))) ->> 'own_copies')::int,
          1, 'a copy read twice is recognised again');
select is(pg_temp.events('reply.confirmed_by_copy'), 2,
          'no second confirmation for a reply already sent');

-- Someone else using a reply's Message-ID is a customer's email like any other.
select is((pg_temp.ingest(9, jsonb_build_array(
             pg_temp.msg('<reply-4@loja.test>', 9, 'cliente@example.com'))) ->> 'stored')::int,
          1, 'a reply''s Message-ID from another sender is stored and processed');
select is((pg_temp.reply('<reply-4@loja.test>')).status, 'drafted',
          'and confirms nothing');

-- The function itself.
select is(public.confirm_reply_by_copy('20000000-0000-4000-8000-000000000001',
                                       '<unknown@loja.test>'),
          null, 'a Message-ID that is no reply of the store confirms nothing');
select is(public.confirm_reply_by_copy('20000000-0000-4000-8000-000000000002',
                                       '<reply-4@loja.test>'),
          null, 'another store''s reply is not confirmed');

reset role;
select ok(has_function_privilege('service_role',
            'public.confirm_reply_by_copy(uuid, text, jsonb)', 'execute'),
          'service_role may confirm a reply by its copy');
select ok(not has_function_privilege('anon',
            'public.confirm_reply_by_copy(uuid, text, jsonb)', 'execute'),
          'anon may not');

select * from finish();
rollback;
