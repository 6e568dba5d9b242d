-- Notifications (issue 12 item 1): the triggers that call notify_people (a reply held, a job
-- dead-lettered, a store's breaker opening) and what resolves their items; the digest's SQL
-- (take, channels, finish); settings (validation, the webhook URL in Vault, recipients); the
-- console's owner-only change. Runs as service_role unless stated.
begin;
select plan(53);

insert into auth.users (id, email) values
  ('00000000-0000-4000-8000-0000000000a1', 'Owner-A@example.test'),
  ('00000000-0000-4000-8000-0000000000a2', 'agent-a@example.test');
insert into public.stores (id, owner_id, name, support_email, imap_host, imap_port, imap_user,
                           smtp_host, smtp_port, smtp_user)
values
  ('31000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-0000000000a1', 'A',
   'help@a.test', 'imap.a.test', 993, 'help', 'smtp.a.test', 587, 'help'),
  ('31000000-0000-4000-8000-00000000000b', null, 'B',
   'help@b.test', 'imap.b.test', 993, 'help', 'smtp.b.test', 587, 'help');
insert into public.store_members (store_id, user_id, role)
values ('31000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-0000000000a2', 'agent');
insert into public.conversations (id, store_id, customer_email, subject) values
  ('32000000-0000-4000-8000-0000000000a1', '31000000-0000-4000-8000-00000000000a',
   'ana@c.test', 'Onde está meu pedido?');
insert into public.messages (id, store_id, conversation_id, message_id, from_address, subject)
values ('33000000-0000-4000-8000-0000000000a1', '31000000-0000-4000-8000-00000000000a',
        '32000000-0000-4000-8000-0000000000a1', '<m1@c.test>', 'ana@c.test',
        'Onde está meu pedido?'),
       ('33000000-0000-4000-8000-0000000000a2', '31000000-0000-4000-8000-00000000000a',
        '32000000-0000-4000-8000-0000000000a1', '<m2@c.test>', 'ana@c.test', 'De novo');

create function pg_temp.items(p_kind text) returns int language sql as $$
  select count(*)::int from public.notifications where kind = p_kind and resolved_at is null
$$;
create function pg_temp.notify_jobs(p_store text) returns int language sql as $$
  select count(*)::int from public.job_queue
  where store_id = p_store::uuid and job_type = 'notify'
$$;
-- p_times failures of a breaker, printing nothing.
create function pg_temp.fail(p_service text, p_times int) returns void language plpgsql as $$
begin
  for i in 1 .. p_times loop
    perform public.circuit_record(p_service, false);
  end loop;
end
$$;
grant execute on all functions in schema pg_temp to service_role;

set local role service_role;

-- A reply becomes held ---------------------------------------------------------------------------
insert into public.replies (id, store_id, conversation_id, message_id, status, to_address,
                            subject, body_text, hold_reason)
values ('34000000-0000-4000-8000-0000000000a1', '31000000-0000-4000-8000-00000000000a',
        '32000000-0000-4000-8000-0000000000a1', '33000000-0000-4000-8000-0000000000a1', 'held',
        'ana@c.test', 'Re: Onde está meu pedido?', 'Olá Ana, o corpo do rascunho', 'needs_human'),
       ('34000000-0000-4000-8000-0000000000a2', '31000000-0000-4000-8000-00000000000a',
        '32000000-0000-4000-8000-0000000000a1', '33000000-0000-4000-8000-0000000000a2',
        'drafted', 'ana@c.test', 'Re: De novo', 'Olá', null);
select is(pg_temp.items('held_reply'), 1, 'a reply saved held makes one held_reply item');
select is((select detail from public.notifications where kind = 'held_reply'),
          jsonb_build_object('conversation_id', '32000000-0000-4000-8000-0000000000a1',
                             'subject', 'Re: Onde está meu pedido?', 'customer', 'ana@c.test',
                             'hold_reason', 'needs_human'),
          'it names the conversation, subject, customer and reason, never the body');
update public.replies set status = 'held', hold_reason = 'delivery_in_doubt'
where id = '34000000-0000-4000-8000-0000000000a2';
select is(pg_temp.items('held_reply'), 2, 'a reply moved to held makes its own item');
update public.replies set hold_reason = 'complaint'
where id = '34000000-0000-4000-8000-0000000000a2';
select is(pg_temp.items('held_reply'), 2, 'a held reply changed again adds nothing');
update public.replies set status = 'discarded' where id = '34000000-0000-4000-8000-0000000000a2';
select is(pg_temp.items('held_reply'), 1, 'a held reply that is dealt with (discarded) resolves its item');
select is((select status from public.notifications where ref = '34000000-0000-4000-8000-0000000000a2'),
          'resolved', 'and, taken by no digest yet, it is never sent');
select is(pg_temp.notify_jobs('31000000-0000-4000-8000-00000000000a'), 1,
          'one digest job waits for the store');

-- A job is dead-lettered -----------------------------------------------------------------------
insert into public.job_queue (id, job_type, status, store_id, conversation_id, attempt_count)
values ('35000000-0000-4000-8000-0000000000a1', 'process_email', 'processing',
        '31000000-0000-4000-8000-00000000000a', '32000000-0000-4000-8000-0000000000a1', 1),
       ('35000000-0000-4000-8000-0000000000a2', 'notify', 'processing',
        '31000000-0000-4000-8000-00000000000a', null, 1),
       ('35000000-0000-4000-8000-0000000000a3', 'fetch_mailbox', 'processing',
        '31000000-0000-4000-8000-00000000000a', null, 1),
       ('35000000-0000-4000-8000-0000000000b1', 'process_email', 'processing',
        null, null, 1);
update public.job_queue
set status = 'dead_letter', last_error = 'smtp: 550 no such user', last_error_type = 'permanent'
where id in ('35000000-0000-4000-8000-0000000000a1', '35000000-0000-4000-8000-0000000000a2',
             '35000000-0000-4000-8000-0000000000a3', '35000000-0000-4000-8000-0000000000b1');
select is(pg_temp.items('dead_letter'), 1,
          'a store''s dead letter makes one item; a notify job''s, a fetch job''s (its breaker '
          'tells) and a store-less job''s none');
select is((select ref from public.notifications where kind = 'dead_letter'),
          '35000000-0000-4000-8000-0000000000a1', 'the item is the dead job');
select is((select detail ->> 'subject' from public.notifications where kind = 'dead_letter'),
          'Onde está meu pedido?', 'and carries its conversation''s subject');
select ok(public.requeue_dlq_job('35000000-0000-4000-8000-0000000000a1'), 'requeued');
select is(pg_temp.items('dead_letter'), 0, 'a requeue resolves the dead letter''s item');
update public.job_queue set status = 'dead_letter', last_error = 'smtp: 550 again'
where id = '35000000-0000-4000-8000-0000000000a1';
select is(pg_temp.items('dead_letter'), 1, 'dead-lettered again, it is told again');

-- A store's breaker opens -----------------------------------------------------------------------
select pg_temp.fail('imap:31000000-0000-4000-8000-00000000000b', 4);
select is(pg_temp.items('credentials_failed'), 0, 'failures below the threshold tell nobody');
select pg_temp.fail('imap:31000000-0000-4000-8000-00000000000b', 1);
select is(pg_temp.items('credentials_failed'), 1, 'the breaker opening makes one item');
select is((select store_id::text || ' ' || ref from public.notifications
           where kind = 'credentials_failed'),
          '31000000-0000-4000-8000-00000000000b imap:31000000-0000-4000-8000-00000000000b',
          'for the breaker''s store and service');
update public.circuit_breakers set open_until = now() - interval '1 second'
where service = 'imap:31000000-0000-4000-8000-00000000000b';
select ok(public.circuit_allow('imap:31000000-0000-4000-8000-00000000000b'), 'half-open probe');
select pg_temp.fail('imap:31000000-0000-4000-8000-00000000000b', 1);
select is((select count(*)::int from public.notifications where kind = 'credentials_failed'), 1,
          'a failed probe reopens the breaker and adds nothing');
select is(public.circuit_record('imap:31000000-0000-4000-8000-00000000000b', true), 'closed',
          'a success closes the breaker');
select is(pg_temp.items('credentials_failed'), 0, 'the breaker closing resolves the item');
select pg_temp.fail('claude', 5);
select pg_temp.fail('smtp:not-a-store', 5);
select is((select count(*)::int from public.notifications where kind = 'credentials_failed'), 1,
          'breakers of no store (claude, a malformed name) tell nobody');

-- The digest: take, channels, finish -----------------------------------------------------------
update public.job_queue set status = 'processing', locked_by = 'w1', attempt_count = 1
where store_id = '31000000-0000-4000-8000-00000000000a' and job_type = 'notify'
  and status = 'pending';
create temp table taken as
select public.take_notification_digest(
  (select id from public.job_queue where store_id = '31000000-0000-4000-8000-00000000000a'
     and job_type = 'notify' and status = 'processing' and locked_by = 'w1'), 'w1') as d;
select is((select jsonb_array_length(d -> 'items') from taken), 2,
          'the digest takes the store''s open items (a held reply, a dead letter)');
select is((select array(select jsonb_array_elements(d -> 'items') ->> 'kind') from taken),
          array['held_reply', 'dead_letter'], 'oldest first');
select is((select d -> 'recipients' from taken),
          '["owner-a@example.test", "agent-a@example.test"]'::jsonb,
          'by default it goes to the store''s people, owners first');
select is((select d -> 'store' ->> 'name' from taken), 'A', 'it names its store');
select is((select (d ->> 'webhook')::boolean from taken), false, 'no webhook configured');
select is(public.take_notification_digest(
            (select (d -> 'digest' ->> 'job_id')::uuid from taken), 'someone-else'), null,
          'only the job''s holder takes its digest');
select public.notify_people('31000000-0000-4000-8000-00000000000a', 'credits_low', 'credits_low',
                            '{"credits": 3}');
select is((select count(*)::int from public.job_queue
           where store_id = '31000000-0000-4000-8000-00000000000a' and job_type = 'notify'
             and status = 'pending'), 1,
          'an item after the digest started waits for the next digest job');
select is((select jsonb_array_length(public.take_notification_digest(
                    (d -> 'digest' ->> 'job_id')::uuid, 'w1') -> 'items') from taken), 2,
          'a retry of the digest takes the same items, not the later one');
-- The first digest goes back to pending for a retry: a new item still gets a digest of its own.
update public.job_queue set status = 'pending', locked_by = null
where id = (select (d -> 'digest' ->> 'job_id')::uuid from taken);
select public.notify_people('31000000-0000-4000-8000-00000000000a', 'waiting_for_credits', 'm-1');
select is((select count(*)::int from public.notifications n
           where n.kind = 'waiting_for_credits' and n.digest_job_id is null), 1,
          'an item arriving while a digest waits for its retry is not taken by it');
select is((select count(*)::int from public.job_queue
           where store_id = '31000000-0000-4000-8000-00000000000a' and job_type = 'notify'
             and status = 'pending'), 2,
          'so it waits for a digest job that has taken nothing yet');
update public.job_queue set status = 'processing', locked_by = 'w1'
where id = (select (d -> 'digest' ->> 'job_id')::uuid from taken);
select is((select (public.record_notification_channel(
                     (d -> 'digest' ->> 'job_id')::uuid, 'email',
                     '{"to": ["owner-a@example.test"], "message_id": "<n1@a.test>"}')).email_message_id
           from taken), '<n1@a.test>', 'the email channel is recorded');
select is((select (public.record_notification_channel(
                     (d -> 'digest' ->> 'job_id')::uuid, 'webhook', '{"error": "404"}')).webhook_error
           from taken), '404', 'a webhook that gave up is recorded without a sent time');
update public.job_queue set status = 'dead_letter'
where id = (select (d -> 'digest' ->> 'job_id')::uuid from taken);
select is(pg_temp.items('dead_letter'), 1, 'a dead-lettered digest is never an item itself');
update public.job_queue set status = 'processing', locked_by = 'w1'
where id = (select (d -> 'digest' ->> 'job_id')::uuid from taken);
select is((select (webhook_error, email_message_id)::text from public.notification_digests
           where job_id = (select (d -> 'digest' ->> 'job_id')::uuid from taken)),
          '(,<n1@a.test>)',
          'requeued, a digest forgets its channels'' failures and keeps what went out');
select ok((select public.finish_notification_digest((d -> 'digest' ->> 'job_id')::uuid, 'w1',
                                                    '{"outcome": "sent"}') from taken),
          'finish completes the job');
select is((select array_agg(status || ' ' || kind order by kind) from public.notifications
           where digest_job_id = (select (d -> 'digest' ->> 'job_id')::uuid from taken)),
          array['sent dead_letter', 'sent held_reply'], 'its items are sent');
select is((select status from public.notifications where kind = 'credits_low'), 'pending',
          'the later item still waits');

-- Settings ------------------------------------------------------------------------------------
select throws_ok($$select public.admin_set_notification_settings(
                     '31000000-0000-4000-8000-00000000000b',
                     '{"addresses": ["not-an-address"], "digest_interval_minutes": 0,
                       "webhook_url": "http://hooks.example.com/x", "colour": "red"}')$$,
                 '22023', 'invalid notification settings', 'bad settings are refused');
select is((select public.admin_set_notification_settings(
                     '31000000-0000-4000-8000-00000000000b',
                     '{"addresses": ["Ops@B.test", "ops@b.test", "boss@b.test"],
                       "digest_interval_minutes": 5,
                       "webhook_url": "https://hooks.example.com/services/T1/B2/secret9999"}')
           - 'store_id'),
          '{"addresses": ["boss@b.test", "ops@b.test"],
            "recipients": ["boss@b.test", "ops@b.test"], "digest_interval_minutes": 5,
            "digest_wait_seconds": 60, "webhook": true,
            "webhook_hint": "hooks.example.com …9999"}'::jsonb,
          'addresses are folded and deduplicated; the webhook is shown by a hint only');
select is(public.get_notification_webhook('31000000-0000-4000-8000-00000000000b'),
          'https://hooks.example.com/services/T1/B2/secret9999', 'the URL is kept in Vault');
select is((select count(*)::int from public.notification_settings
           where webhook_hint like '%secret%'), 0, 'and nowhere in the settings row');
select is(public.admin_set_notification_settings('31000000-0000-4000-8000-00000000000b',
            '{"webhook_url": null, "addresses": null}') ->> 'webhook', 'false',
          'the webhook can be removed');
select is(public.get_notification_webhook('31000000-0000-4000-8000-00000000000b'), null,
          'null removes the webhook');
select is(public.notification_recipients('31000000-0000-4000-8000-00000000000b'),
          array['help@b.test'], 'a store without people is told at its support address');

-- The console: owners change settings, agents read them ------------------------------------------
reset role;
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000a2", "role": "authenticated"}';
select is((public.console_notifications('31000000-0000-4000-8000-00000000000a')
           -> 'settings' ->> 'digest_interval_minutes'), '15', 'an agent reads the settings');
select throws_ok($$select public.console_set_notification_settings(
                     '31000000-0000-4000-8000-00000000000a', '{"digest_interval_minutes": 5}')$$,
                 '42501', null, 'an agent cannot change them');
select throws_ok($$select public.console_notifications('31000000-0000-4000-8000-00000000000b')$$,
                 '42501', null, 'nor read another store''s');
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000a1", "role": "authenticated"}';
select is((public.console_set_notification_settings(
             '31000000-0000-4000-8000-00000000000a', '{"digest_interval_minutes": 5}')
           ->> 'digest_interval_minutes'), '5', 'the owner can');
select throws_ok($$select public.console_set_notification_settings(
                     '31000000-0000-4000-8000-00000000000a', '{"digest_wait_seconds": -1}')$$,
                 'PT400', null, 'a bad value is a 400 for the console');
select ok((select jsonb_array_length(public.console_notifications(
                    '31000000-0000-4000-8000-00000000000a') -> 'items') = 6
           and not exists (select 1 from jsonb_array_elements(public.console_notifications(
                    '31000000-0000-4000-8000-00000000000a') -> 'items') i
                           where (i ->> 'store_id') <> '31000000-0000-4000-8000-00000000000a')),
          'the console lists the store''s own notifications only');
reset role;

-- Static check of every PL/pgSQL body of this concern.
select is(array(select format('%s: %s', p.proname, c.message)
                from pg_proc p,
                     lateral extensions.plpgsql_check_function_tb(
                       p.oid::regprocedure, extra_warnings => true,
                       performance_warnings => true) c
                where p.oid = any (array['public.notify_people(uuid,text,text,jsonb)'::regprocedure,
                                         'public.take_notification_digest(uuid,text)',
                                         'public.record_notification_channel(uuid,text,jsonb)',
                                         'public.finish_notification_digest(uuid,text,jsonb)',
                                         'public.notification_settings_apply(uuid,jsonb)',
                                         'public.admin_set_notification_settings(uuid,jsonb)',
                                         'public.console_notifications(uuid,integer)',
                                         'public.console_set_notification_settings(uuid,jsonb)'])),
          '{}'::text[], 'plpgsql_check finds nothing in the notification functions');
select is(array(select format('%s: %s', t.fn, c.message)
                from (values ('public.notify_reply_held()', 'public.replies'),
                             ('public.notify_job_dead_lettered()', 'public.job_queue'),
                             ('public.notify_breaker_changed()', 'public.circuit_breakers'),
                             ('public.notify_digest_requeued()', 'public.job_queue'))
                       as t (fn, rel),
                     lateral extensions.plpgsql_check_function_tb(
                       t.fn::regprocedure, t.rel::regclass, extra_warnings => true,
                       performance_warnings => true) c),
          '{}'::text[], 'plpgsql_check finds nothing in the notification triggers');

select * from finish();
rollback;
