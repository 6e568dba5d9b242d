-- The mailbox as the record (issue 12 item 2, decision 0019): the store settings and their
-- validation, the mailbox_record job enqueued in the transaction that changes a reply, and a
-- person's reply from their own mail client superseding a held reply, which is then never sent
-- (begin_send and the console refuse it, whichever of the two comes first).
begin;
select plan(53);

insert into auth.users (id, email) values
  ('00000000-0000-4000-8000-0000000000e1', 'owner-e@example.test');
insert into public.stores (id, owner_id, name, support_email, imap_host, imap_port, imap_user,
                           smtp_host, smtp_port, smtp_user, credits)
values ('50000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-0000000000e1', 'Loja',
        'help@loja.test', 'imap.loja.test', 993, 'help', 'smtp.loja.test', 587, 'help', 10),
       ('50000000-0000-4000-8000-000000000002', null, 'Quieta', 'help@quieta.test',
        'imap.q.test', 993, 'help', 'smtp.q.test', 587, 'help', 10);
update public.stores
set mailbox_sent = 'never', mailbox_drafts = false, mailbox_mark_answered = false
where id = '50000000-0000-4000-8000-000000000002';

-- Settings ------------------------------------------------------------------------------------

select is((select array[mailbox_sent, mailbox_drafts::text, mailbox_mark_answered::text,
                        coalesce(mailbox_sent_folder, '-'), coalesce(mailbox_drafts_folder, '-')]
           from public.stores where id = '50000000-0000-4000-8000-000000000001'),
          array['auto', 'true', 'true', '-', '-'],
          'a new store files in Sent (auto), places drafts, marks answered mail, finds folders');
select is(public.validate_store_settings('{"name": "X", "support_email": "a@x.test",
            "imap_host": "imap.x.test", "imap_port": 993, "imap_user": "a",
            "smtp_host": "smtp.x.test", "smtp_port": 587, "smtp_user": "a",
            "mailbox_sent": "always", "mailbox_drafts": false,
            "mailbox_sent_folder": "Enviados"}'::jsonb),
          '{}'::text[], 'the mailbox settings are store settings');
select is(public.validate_store_settings('{"mailbox_sent": "sometimes",
            "mailbox_drafts_folder": " ", "mailbox_mark_answered": "maybe"}'::jsonb,
            '50000000-0000-4000-8000-000000000001'),
          array['mailbox_mark_answered: invalid input syntax for type boolean: "maybe"',
                'mailbox_sent must be auto, always or never',
                'mailbox_drafts_folder must be a folder name or null'],
          'each bad mailbox setting is listed');
select throws_ok($$select public.admin_update_store('50000000-0000-4000-8000-000000000001',
                                                    '{"mailbox_sent": "sometimes"}')$$,
                 '22023', 'invalid store settings', 'and refused by admin_update_store');
select is((public.admin_update_store('50000000-0000-4000-8000-000000000001',
                                     '{"mailbox_sent_folder": "Enviados"}')).mailbox_sent_folder,
          'Enviados', 'admin_update_store saves a folder name');
select is((public.admin_update_store('50000000-0000-4000-8000-000000000001',
                                     '{"mailbox_sent_folder": null}')).mailbox_sent_folder,
          null, 'and clears it (back to the special-use flag)');

-- Customer mail and replies ---------------------------------------------------------------------

create function pg_temp.msg(p_message_id text, p_uid int)
returns jsonb language sql as $$
  select jsonb_build_object(
    'message_id', p_message_id, 'uid', p_uid, 'from_address', 'cliente@example.com',
    'from_name', 'Cliente', 'to_addresses', jsonb_build_array('help@loja.test'),
    'subject', 'Pedido', 'body_text', 'Olá', 'size_bytes', 900)
$$;
create function pg_temp.message(p_message_id text) returns public.messages language sql as $$
  select * from public.messages where message_id = p_message_id
$$;
create function pg_temp.reply(p_smtp_id text) returns public.replies language sql as $$
  select * from public.replies where smtp_message_id = p_smtp_id
$$;
create function pg_temp.record_jobs(p_smtp_id text) returns text[] language sql as $$
  select coalesce(array_agg(q.payload ->> 'status' order by q.created_at, q.id), '{}')
  from public.job_queue q
  where q.job_type = 'mailbox_record'
    and q.payload ->> 'reply_id' = (pg_temp.reply(p_smtp_id)).id::text
$$;
create function pg_temp.save(p_message_id text, p_smtp_id text, p_hold text)
returns public.replies language sql as $$
  select public.save_reply(gen_random_uuid(), (pg_temp.message(p_message_id)).id,
                           jsonb_build_object('to_address', 'cliente@example.com',
                                              'subject', 'Re: Pedido', 'body_text', 'Oi',
                                              'smtp_message_id', p_smtp_id,
                                              'hold', p_hold is not null, 'hold_reason', p_hold))
$$;
create function pg_temp.scan(p_last_uid bigint, p_messages jsonb) returns jsonb language sql as $$
  select public.record_sent_scan('50000000-0000-4000-8000-000000000001', 'Sent', 7, p_last_uid,
                                 p_messages)
$$;
create function pg_temp.human(p_uid int, p_message_id text, p_in_reply_to text) returns jsonb
language sql as $$
  select jsonb_build_object('uid', p_uid, 'message_id', p_message_id,
                            'in_reply_to', p_in_reply_to, 'references', '[]'::jsonb,
                            'from', 'Maria Silva <help@loja.test>')
$$;
grant execute on all functions in schema pg_temp to service_role;

select public.ingest_messages('50000000-0000-4000-8000-000000000001', 'INBOX', 1, 7,
  jsonb_build_array(pg_temp.msg('<m1@c.test>', 1), pg_temp.msg('<m2@c.test>', 2),
                    pg_temp.msg('<m3@c.test>', 3), pg_temp.msg('<m4@c.test>', 4),
                    pg_temp.msg('<m5@c.test>', 5), pg_temp.msg('<m6@c.test>', 6),
                    pg_temp.msg('<m7@c.test>', 7)));
select public.ingest_messages('50000000-0000-4000-8000-000000000002', 'INBOX', 1, 1,
  jsonb_build_array(jsonb_set(pg_temp.msg('<q1@c.test>', 1), '{to_addresses}',
                              '["help@quieta.test"]')));

set local role service_role;

-- The job, enqueued with the transition ---------------------------------------------------------

select pg_temp.save('<m1@c.test>', '<r1@loja.test>', null);
select is(pg_temp.record_jobs('<r1@loja.test>'), '{}'::text[], 'a drafted reply files nothing');
select is(public.begin_send((pg_temp.reply('<r1@loja.test>')).id), 'ok', 'the send begins');
select is(pg_temp.record_jobs('<r1@loja.test>'), '{}'::text[], 'nor does a sending one');
select public.finish_send((pg_temp.reply('<r1@loja.test>')).id, gen_random_uuid(), 'w', '{}');
select is(pg_temp.record_jobs('<r1@loja.test>'), array['sent'],
          'finish_send enqueues one mailbox_record job in its own transaction');
select is((select array[q.store_id::text, q.conversation_id::text, q.priority::text,
                        q.max_attempts::text]
           from public.job_queue q where q.job_type = 'mailbox_record'
             and q.payload ->> 'reply_id' = (pg_temp.reply('<r1@loja.test>')).id::text),
          array['50000000-0000-4000-8000-000000000001',
                (pg_temp.message('<m1@c.test>')).conversation_id::text, '-1', '8'],
          'keyed by store and conversation, below the sends, with its own retry policy');
select is((public.job_retry_policy('mailbox_record')).base_seconds, 60,
          'mailbox_record retries after a minute, doubling');
select public.finish_send((pg_temp.reply('<r1@loja.test>')).id, gen_random_uuid(), 'w', '{}');
select is(pg_temp.record_jobs('<r1@loja.test>'), array['sent'],
          'recording the send again enqueues nothing more');

select pg_temp.save('<m2@c.test>', '<r2@loja.test>', 'needs_human');
select is(pg_temp.record_jobs('<r2@loja.test>'), array['held'],
          'a held reply is placed in Drafts');
select pg_temp.save('<m3@c.test>', '<r3@loja.test>', 'delivery_in_doubt');
select is(pg_temp.record_jobs('<r3@loja.test>'), '{}'::text[],
          'but never one whose delivery is in doubt');
select is((select count(*)::int from public.job_queue q
           where q.job_type = 'mailbox_record'
             and q.store_id = '50000000-0000-4000-8000-000000000002'), 0,
          'a store with every mailbox setting off gets no job');
select is(array(select public.mailbox_record_wanted(
                jsonb_populate_record(s, '{"mailbox_drafts": true}'), 'sent', null, false, p)
              from public.stores s, unnest(array[false, true]) as p
              where s.id = '50000000-0000-4000-8000-000000000002'),
          array[false, true],
          'with only drafts on, only a reply a person sent can have a draft to take out');

-- The load_mailbox_record context.
select is((public.load_mailbox_record((pg_temp.reply('<r2@loja.test>')).id)
           -> 'message' ->> 'message_id'), '<m2@c.test>',
          'load_mailbox_record names the customer message it answers');
select is((public.load_mailbox_record((pg_temp.reply('<r2@loja.test>')).id)
           -> 'store' ->> 'mailbox_sent'), 'auto', 'with the store''s settings');

-- A person answers from their own mail client -------------------------------------------------

-- m2: held, answered from the mail client (In-Reply-To), before anyone sends it in the console.
select is(pg_temp.scan(10, jsonb_build_array(
            pg_temp.human(8, '<maria-1@loja.test>', '<m2@c.test>'))),
          '{"answered": 1, "superseded": 1, "last_uid": 10}'::jsonb,
          'record_sent_scan finds the person''s reply to a held conversation');
select is((pg_temp.reply('<r2@loja.test>')).status, 'superseded', 'the held reply is superseded');
select is(array[(pg_temp.reply('<r2@loja.test>')).answered_by,
                (pg_temp.reply('<r2@loja.test>')).answered_message_id],
          array['Maria Silva <help@loja.test>', '<maria-1@loja.test>'],
          'and says who answered, with which message');
select is((select status from public.conversations
           where id = (pg_temp.message('<m2@c.test>')).conversation_id),
          'answered_human', 'the conversation is answered by a person');
select is(pg_temp.record_jobs('<r2@loja.test>'), array['held', 'superseded'],
          'and its draft is taken out of Drafts');
select is((select count(*)::int from public.events where event_type = 'reply.superseded'
             and store_id = '50000000-0000-4000-8000-000000000001'), 1,
          'reply.superseded is recorded');
select is((select credits from public.stores where id = '50000000-0000-4000-8000-000000000001'),
          10, 'no credit is kept for a reply we never send');
select is(public.begin_send((pg_temp.reply('<r2@loja.test>')).id), 'superseded',
          'the send gate refuses it');
select is((pg_temp.reply('<r2@loja.test>')).status, 'superseded', 'and leaves it superseded');
select is((select last_uid from public.sent_scan_state
           where store_id = '50000000-0000-4000-8000-000000000001'), 10::bigint,
          'the Sent position moves in the same transaction');

-- A message in Sent that is one of our own replies (Gmail files them) answers nothing.
select pg_temp.save('<m4@c.test>', '<r4@loja.test>', 'needs_human');
select is(pg_temp.scan(11, jsonb_build_array(
            jsonb_set(pg_temp.human(11, '<r1@loja.test>', '<m4@c.test>'), '{from}',
                      '"Loja <help@loja.test>"'))),
          '{"answered": 0, "superseded": 0, "last_uid": 11}'::jsonb,
          'our own reply in Sent is not a person''s answer');
select is((pg_temp.reply('<r4@loja.test>')).status, 'held', 'the held reply stays held');
-- References (not In-Reply-To) are enough, and a reply already sent is left alone.
select is(pg_temp.scan(12, jsonb_build_array(jsonb_build_object(
            'uid', 12, 'message_id', '<maria-2@loja.test>', 'in_reply_to', null,
            'references', jsonb_build_array('<older@c.test>', '<m1@c.test>'),
            'from', 'Maria Silva <help@loja.test>'))),
          '{"answered": 1, "superseded": 0, "last_uid": 12}'::jsonb,
          'a person''s answer to a conversation we already answered supersedes nothing');
select is((pg_temp.reply('<r1@loja.test>')).status, 'sent', 'our sent reply stays sent');
select is((select count(*)::int from public.events
           where event_type = 'conversation.answered_by_person'
             and store_id = '50000000-0000-4000-8000-000000000001'), 1,
          'and the event notes the person''s answer');
select is((select last_uid from public.sent_scan_state
           where store_id = '50000000-0000-4000-8000-000000000001'), 12::bigint,
          'a scan that answers nothing still moves the position');
select is((select last_uid from public.sent_scan_state
           where store_id = '50000000-0000-4000-8000-000000000001'
             and folder = 'Sent' and uidvalidity = 7), 12::bigint, 'per folder and UIDVALIDITY');
select public.record_sent_scan('50000000-0000-4000-8000-000000000001', 'Sent', 8, 3, '[]');
select is((select last_uid from public.sent_scan_state
           where store_id = '50000000-0000-4000-8000-000000000001'), 3::bigint,
          'a new UIDVALIDITY starts the position afresh');

-- The race with a console send ------------------------------------------------------------------

-- m5: the console approves the held reply first (held -> drafted, a send_reply job); the
-- person's answer arrives before the job reaches begin_send: the job's send is refused.
select pg_temp.save('<m5@c.test>', '<r5@loja.test>', 'needs_human');
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000e1", "role": "authenticated",
    "email": "owner-e@example.test"}';
select is(public.console_send_reply((pg_temp.reply('<r5@loja.test>')).id) ->> 'status', 'drafted',
          'the console approves the held reply');
set local role service_role;
select is(pg_temp.record_jobs('<r5@loja.test>'), array['held', 'drafted'],
          'approving it takes its draft out of Drafts');
select is(pg_temp.scan(13, jsonb_build_array(
            pg_temp.human(13, '<maria-3@loja.test>', '<m5@c.test>'))) ->> 'superseded', '1',
          'the person''s answer supersedes the approved reply');
select is(public.begin_send((pg_temp.reply('<r5@loja.test>')).id), 'superseded',
          'so the send_reply job''s send gate refuses it');
select is((select status from public.conversations
           where id = (pg_temp.message('<m5@c.test>')).conversation_id),
          'answered_human', 'the conversation shows the person''s answer');

-- m6: the person's answer is read first; the console's send then finds nothing to send.
select pg_temp.save('<m6@c.test>', '<r6@loja.test>', 'needs_human');
select pg_temp.scan(14, jsonb_build_array(
         pg_temp.human(14, '<maria-4@loja.test>', '<m6@c.test>')));
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000e1", "role": "authenticated",
    "email": "owner-e@example.test"}';
select throws_ok(format('select public.console_send_reply(%L)',
                        (pg_temp.reply('<r6@loja.test>')).id),
                 'PT409', null, 'the console cannot send a superseded reply');
select throws_ok(format('select public.console_write_reply(%L, %L)',
                        (pg_temp.message('<m6@c.test>')).conversation_id, 'Another answer'),
                 'PT409', null, 'nor write another to the message the person answered');
select is((select thread -> 'answered_by'
           from jsonb_array_elements(public.console_conversation(
                  (pg_temp.message('<m6@c.test>')).conversation_id) -> 'thread') as t(thread)
           where thread ->> 'kind' = 'reply'),
          '"Maria Silva <help@loja.test>"'::jsonb, 'the console''s thread says who answered');
set local role service_role;
select is((pg_temp.reply('<r6@loja.test>')).status, 'superseded', 'the reply stays superseded');

-- m7: answered from the mail client before our pipeline drafted anything.
select is(pg_temp.scan(15, jsonb_build_array(
            pg_temp.human(15, '<maria-5@loja.test>', '<m7@c.test>'))),
          '{"answered": 1, "superseded": 1, "last_uid": 15}'::jsonb,
          'a person may answer before the pipeline drafts a reply');
select is((select array[status, to_address, answered_by] from public.replies
           where message_id = (pg_temp.message('<m7@c.test>')).id),
          array['superseded', 'cliente@example.com', 'Maria Silva <help@loja.test>'],
          'a superseded reply row then stands for the person''s answer');
select is((pg_temp.save('<m7@c.test>', '<r7@loja.test>', null)).status, 'superseded',
          'so the email job''s save_reply gets it back and never drafts one to send');
select is((select status from public.conversations
           where id = (pg_temp.message('<m7@c.test>')).conversation_id),
          'answered_human', 'and the conversation is answered by the person');

-- Privileges --------------------------------------------------------------------------------------
reset role;
select ok(not has_function_privilege('authenticated',
            'public.record_sent_scan(uuid, text, bigint, bigint, jsonb)', 'execute'),
          'people cannot mark conversations answered');
select ok(not has_function_privilege('anon', 'public.load_mailbox_record(uuid)', 'execute'),
          'nor read the mailbox job''s context');
select table_privs_are('public', 'sent_scan_state', 'authenticated', array['SELECT'],
                       'authenticated may only read sent_scan_state');

select * from finish();
rollback;
