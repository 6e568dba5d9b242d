-- Credits that never lose an email (20261202000300_credits_wait.sql): a job of a store without
-- credits waits (wait_for_credits), any rise of the balance wakes exactly that store's waiting
-- jobs (the stores.credits trigger), a held draft is not charged (save_reply), sending it from
-- the console is (console_send_reply through charge_for_send, refused at zero credits), and the
-- low-credit warning reaches notify_people once per top-up. Runs as service_role, the console
-- part as a signed-in owner.
begin;
select plan(54);

insert into auth.users (id, email) values
  ('00000000-0000-4000-8000-0000000000e1', 'owner-credits@example.test');
insert into public.stores (id, owner_id, name, support_email, imap_host, imap_port, imap_user,
                           smtp_host, smtp_port, smtp_user, credits, low_credits_at)
values
  ('10000000-0000-4000-8000-0000000000e1', '00000000-0000-4000-8000-0000000000e1', 'Sem créditos',
   'help@broke.test', 'imap.broke.test', 993, 'help', 'smtp.broke.test', 587, 'help', 0, 3),
  ('10000000-0000-4000-8000-0000000000e2', null, 'Outra', 'help@other.test', 'imap.o.test', 993,
   'help', 'smtp.o.test', 587, 'help', 0, 3);

create function pg_temp.msg(p_uid int) returns jsonb language sql as $$
  select jsonb_build_object('message_id', format('<cw%s@cliente.test>', p_uid), 'uid', p_uid,
                            'from_address', format('c%s@cliente.test', p_uid),
                            'subject', 'Pedido', 'body_text', 'Cadê meu pedido?')
$$;
create function pg_temp.job(p_store text, p_uid int) returns public.job_queue language sql as $$
  select q.* from public.job_queue q
  where q.idempotency_key = format('email:%s:<cw%s@cliente.test>', p_store, p_uid)
$$;
create function pg_temp.credits(p_store text) returns int language sql as $$
  select credits from public.stores where id = p_store::uuid
$$;
create function pg_temp.conversation_status(p_store text, p_uid int) returns text
language sql as $$
  select c.status from public.conversations c where c.id = (pg_temp.job(p_store, p_uid)).conversation_id
$$;
grant execute on all functions in schema pg_temp to service_role;

\set broke '''10000000-0000-4000-8000-0000000000e1'''
\set other '''10000000-0000-4000-8000-0000000000e2'''

set local role service_role;
select lives_ok(format($$select public.ingest_messages(%L, 'INBOX', 1, 3,
                  jsonb_build_array(pg_temp.msg(1), pg_temp.msg(2), pg_temp.msg(3)))$$, :broke),
                'three emails arrive at a store without credits');
select lives_ok(format($$select public.ingest_messages(%L, 'INBOX', 1, 9,
                  jsonb_build_array(pg_temp.msg(9)))$$, :other),
                'one at another store without credits');
reset role;
-- Claimed by worker w1 (the claim itself is the queue's business).
update public.job_queue
set status = 'processing', locked_by = 'w1', locked_until = now() + interval '5 minutes',
    attempt_count = 1, started_at = now()
where store_id in (:broke, :other);
set local role service_role;

-- wait_for_credits --------------------------------------------------------------------------------
select is(public.wait_for_credits((pg_temp.job(:broke, 1)).id, 'w2', 3600), 'not_held',
          'a worker that does not hold the job cannot park it');
select is(public.wait_for_credits((pg_temp.job(:broke, 1)).id, 'w1', 3600), 'waiting',
          'a job of a store without credits waits');
select is((pg_temp.job(:broke, 1)).status, 'pending', 'back to pending');
select is((pg_temp.job(:broke, 1)).attempt_count, 0, 'without spending an attempt');
select ok((pg_temp.job(:broke, 1)).next_retry_at between now() + interval '59 minutes'
                                                     and now() + interval '61 minutes',
          'due again only after the long wait');
select is((select e.detail ->> 'reason' from public.events e
           where e.job_id = (pg_temp.job(:broke, 1)).id and e.event_type = 'job.deferred'),
          'waiting_for_credits', 'the deferral says why');
select is(pg_temp.conversation_status(:broke, 1), 'waiting_credits',
          'its conversation shows it waits for credits');
select is((select count(*)::int from public.credit_waits where store_id = :broke), 1,
          'recorded among the store''s waiting jobs');
select is(public.wait_for_credits((pg_temp.job(:broke, 2)).id, 'w1', 3600), 'waiting',
          'a second email waits too');
select is(public.wait_for_credits((pg_temp.job(:other, 9)).id, 'w1', 3600), 'waiting',
          'and one at the other store');
select is((select count(*)::int from public.notifications
           where store_id = :broke and kind = 'waiting_for_credits'), 1,
          'the store''s people are told once, not once per email');
select is((select ref from public.notifications
           where store_id = :broke and kind = 'waiting_for_credits'), 'topup:0',
          'about this credit episode (no top-up yet)');
select is((select (detail ->> 'waiting')::int from public.notifications
           where store_id = :broke and kind = 'waiting_for_credits'), 1,
          'with how many emails waited then');

-- a top-up wakes exactly the store's waiting jobs ------------------------------------------------
select is(public.admin_add_credits(:broke, 2), 2, 'an operator adds two credits');
select ok((pg_temp.job(:broke, 1)).next_retry_at <= now()
          and (pg_temp.job(:broke, 2)).next_retry_at <= now(),
          'both waiting jobs are due now; nobody touched the queue');
select is(pg_temp.conversation_status(:broke, 1), 'open', 'their conversations are open again');
select is((select count(*)::int from public.credit_waits where store_id = :broke), 0,
          'and no longer recorded as waiting');
select isnt((select resolved_at from public.notifications
             where store_id = :broke and kind = 'waiting_for_credits'), null,
            'the top-up resolves what the store''s people were told');
select ok((pg_temp.job(:other, 9)).next_retry_at > now() + interval '59 minutes',
          'the other store''s waiting job sleeps on');
select is((select (e.detail ->> 'jobs')::int from public.events e
           where e.store_id = :broke and e.event_type = 'credit.waiters_woken'), 2,
          'the wake-up is recorded');
select is(public.wait_for_credits((pg_temp.job(:broke, 3)).id, 'w1', 3600), 'has_credits',
          'with credits a job goes on at once');

-- a held draft is not charged -------------------------------------------------------------------
reset role;
update public.job_queue set status = 'processing', locked_by = 'w1',
                            locked_until = now() + interval '5 minutes'
where id in ((pg_temp.job(:broke, 1)).id, (pg_temp.job(:broke, 2)).id);
set local role service_role;
select is(public.reserve_credit(:broke, (pg_temp.job(:broke, 1)).id), 'reserved',
          'email 1 reserves its credit before drafting');
select is(pg_temp.credits(:broke), 1, 'one credit left');
select is((public.save_reply((pg_temp.job(:broke, 1)).id, ((pg_temp.job(:broke, 1)).payload ->> 'message_id')::uuid,
          jsonb_build_object('to_address', 'c1@cliente.test', 'subject', 'Re: Pedido',
                             'body_text', 'Olá', 'smtp_message_id', '<r1@broke.test>',
                             'hold', true, 'hold_reason', 'needs_human'))).status,
          'held', 'its draft is held for a person');
select is(pg_temp.credits(:broke), 2, 'holding it gave the credit back');
select is((select array_agg(reason order by id) from public.credit_ledger
           where job_id = (pg_temp.job(:broke, 1)).id), array['reply', 'refund'],
          'one charge and one refund for the job');
select is((public.save_reply((pg_temp.job(:broke, 1)).id, ((pg_temp.job(:broke, 1)).payload ->> 'message_id')::uuid,
          jsonb_build_object('to_address', 'c1@cliente.test', 'hold', true))).status, 'held',
          'saving it again returns the same reply');
select is(pg_temp.credits(:broke), 2, 'and refunds nothing twice');
select is(public.reserve_credit(:broke, (pg_temp.job(:broke, 2)).id), 'reserved',
          'email 2 reserves its credit');
select is((public.save_reply((pg_temp.job(:broke, 2)).id, ((pg_temp.job(:broke, 2)).payload ->> 'message_id')::uuid,
          jsonb_build_object('to_address', 'c2@cliente.test', 'subject', 'Re: Pedido',
                             'body_text', 'Olá', 'smtp_message_id', '<r2@broke.test>',
                             'hold', false))).status, 'drafted', 'its reply goes out');
select is(pg_temp.credits(:broke), 1, 'a reply that goes out keeps its charge');

-- charge_for_send -----------------------------------------------------------------------------
select is(public.charge_for_send(:broke, (pg_temp.job(:broke, 2)).id, 'c2@cliente.test'),
          (pg_temp.job(:broke, 2)).id, 'a standing charge pays for the send (not charged twice)');
select is(pg_temp.credits(:broke), 1, 'nothing more taken');

-- the console: sending the held draft charges one credit ---------------------------------------
reset role;
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000e1", "role": "authenticated",
    "email": "owner-credits@example.test"}';
create temp table sent as
select public.console_send_reply(
  (select r.id from public.replies r where r.job_id = (pg_temp.job(:broke, 1)).id)) as result;
reset role;
select is(pg_temp.credits(:broke), 0, 'the owner sent the held draft: one credit taken now');
select isnt((select r.job_id from public.replies r
             where r.id = ((select result from sent) ->> 'reply_id')::uuid),
            (pg_temp.job(:broke, 1)).id, 'charged under a new id (the job''s was refunded)');
select is((select count(*)::int from public.credit_ledger l join public.replies r
             on r.job_id = l.job_id
           where r.id = ((select result from sent) ->> 'reply_id')::uuid), 1,
          'exactly one charge for the send');
select is((select count(*)::int from public.job_queue q
           where q.job_type = 'send_reply'
             and q.payload ->> 'reply_id' = (select result from sent) ->> 'reply_id'), 1,
          'and one send job');
select is((select smtp_message_id from public.replies
           where id = ((select result from sent) ->> 'reply_id')::uuid), '<r1@broke.test>',
          'the reply keeps its Message-ID');

-- at zero credits a person is told to add credits ------------------------------------------------
insert into public.replies (store_id, conversation_id, message_id, job_id, status, to_address,
                            subject, body_text, smtp_message_id, hold_reason)
select :broke::uuid, q.conversation_id, (q.payload ->> 'message_id')::uuid, q.id, 'held',
       'c3@cliente.test', 'Re: Pedido', '', '<r3@broke.test>', 'reply_cap'
from public.job_queue q where q.id = (pg_temp.job(:broke, 3)).id;
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000e1", "role": "authenticated",
    "email": "owner-credits@example.test"}';
select throws_ok(format($$select public.console_send_reply(
                   (select id from public.replies where smtp_message_id = '<r3@broke.test>'))$$),
                 'PT400', 'this reply has no text yet; write it, then send',
                 'a draft held without text (over the cap) needs the person''s text');
select throws_ok(format($$select public.console_send_reply(
                   (select id from public.replies where smtp_message_id = '<r3@broke.test>'),
                   'Olá, seu pedido sai hoje.')$$),
                 'PT409', 'the store has no credits left; add credits, then send this reply',
                 'at zero credits sending is refused with what to do');
select is((select status from public.replies where smtp_message_id = '<r3@broke.test>'), 'held',
          'the reply stays held for later');
reset role;

-- the low-credit warning -------------------------------------------------------------------------
set local role service_role;
select is((select count(*)::int from public.notifications
           where store_id = :broke and kind = 'credits_low'), 0,
          'no warning yet: the balance never fell below the threshold from above it');
select is(public.admin_add_credits(:broke, 5, 'topup'), 5, 'a top-up to 5 (threshold 3)');
create function pg_temp.charge(p_n int) returns text language sql as $$
  select public.reserve_credit('10000000-0000-4000-8000-0000000000e1',
                               ('60000000-0000-4000-8000-' || lpad(p_n::text, 12, '0'))::uuid)
$$;
grant execute on function pg_temp.charge(int) to service_role;
select pg_temp.charge(1), pg_temp.charge(2);
select is((select count(*)::int from public.notifications
           where store_id = :broke and kind = 'credits_low'), 0,
          'at 3 credits (the threshold) no warning');
select pg_temp.charge(3);
select is((select count(*)::int from public.notifications
           where store_id = :broke and kind = 'credits_low'), 1,
          'falling to 2 warns the store''s people');
select is((select detail from public.notifications
           where store_id = :broke and kind = 'credits_low'),
          '{"credits": 2, "threshold": 3}'::jsonb, 'with the balance and the threshold');
select ok(public.release_credit(:broke, '60000000-0000-4000-8000-000000000003', 'send_failed'),
          'a refund lifts the balance back to the threshold');
select pg_temp.charge(4);
select is((select count(*)::int from public.notifications
           where store_id = :broke and kind = 'credits_low'), 1,
          'crossing again within the same top-up does not warn twice');
select is((select count(*)::int from public.events
           where store_id = :broke and event_type = 'credit.low'), 2,
          'each crossing is on the record');
select is(public.admin_add_credits(:broke, 10), 12, 'a new top-up');
select is((select count(*)::int from public.notifications
           where store_id = :broke and kind = 'credits_low' and resolved_at is not null), 1,
          'the top-up resolves the warning about the last episode');
select pg_temp.charge(n) from generate_series(5, 14) n;
select is((select count(*)::int from public.notifications
           where store_id = :broke and kind = 'credits_low'), 2,
          'after a new top-up, falling below warns again');

select * from finish();
rollback;
