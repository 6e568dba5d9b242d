-- Processing: load_job_context, save_reply, the reply state machine (begin_send, finish_send,
-- reset_reply) and credits (reserve_credit, release_credit, admin_add_credits).
-- Runs as service_role. now() is fixed within the transaction, so times compare exactly.
begin;
select plan(77);

insert into public.stores (id, name, support_email, imap_host, imap_port, imap_user, smtp_host,
                           smtp_port, smtp_user, credits)
values ('10000000-0000-4000-8000-000000000001', 'Loja', 'help@loja.test', 'imap.loja.test', 993,
        'help', 'smtp.loja.test', 587, 'help', 2);

create function pg_temp.msg(p_message_id text, p_uid int, p_from text,
                            p_extra jsonb default '{}')
returns jsonb language sql as $$
  select jsonb_build_object('message_id', p_message_id, 'uid', p_uid, 'from_address', p_from,
                            'subject', 'Pedido ' || p_uid, 'body_text', 'Cadê meu pedido?')
         || p_extra
$$;
create function pg_temp.message_id(p_message_id text) returns uuid language sql as $$
  select m.id from public.messages m
  where m.store_id = '10000000-0000-4000-8000-000000000001' and m.message_id = p_message_id
$$;
create function pg_temp.job_id(p_message_id text) returns uuid language sql as $$
  select q.id from public.job_queue q
  where q.idempotency_key = 'email:10000000-0000-4000-8000-000000000001:' || p_message_id
$$;
create function pg_temp.reply(p_id uuid) returns public.replies language sql as $$
  select r.* from public.replies r where r.id = p_id
$$;
create function pg_temp.events(p_type text) returns text[] language sql as $$
  select coalesce(array_agg(e.detail ->> 'reply_id' order by e.id), '{}') from public.events e
  where e.store_id = '10000000-0000-4000-8000-000000000001' and e.event_type = p_type
$$;
create function pg_temp.credits() returns int language sql as $$
  select credits from public.stores where id = '10000000-0000-4000-8000-000000000001'
$$;
create function pg_temp.reply_draft(p_smtp_id text, p_extra jsonb default '{}') returns jsonb
language sql as $$
  select jsonb_build_object(
    'to_address', 'Ana@Cliente.test', 'subject', 'Re: Pedido', 'body_text', 'Olá Ana',
    'smtp_message_id', p_smtp_id, 'in_reply_to', '<m1@cliente.test>',
    'references', jsonb_build_array('<m0@cliente.test>', '<m1@cliente.test>'),
    'hold', false, 'hold_reason', null, 'intent', 'order_status', 'language', 'pt-BR',
    'model', 'offline') || p_extra
$$;
grant execute on all functions in schema pg_temp to service_role;

set local role service_role;
select lives_ok($$select public.ingest_messages(
  '10000000-0000-4000-8000-000000000001', 'INBOX', 1, 4, jsonb_build_array(
    pg_temp.msg('<m1@cliente.test>', 1, 'ana@cliente.test'),
    pg_temp.msg('<m2@cliente.test>', 2, 'ana@cliente.test'),
    pg_temp.msg('<m3@cliente.test>', 3, 'bia@cliente.test',
                '{"reply_to": "Bia.Work@Cliente.test"}'),
    pg_temp.msg('<m4@cliente.test>', 4, 'caio@cliente.test')))$$,
  'four customer emails are ingested');
reset role;
-- The claim itself is the queue's business (and tested there); here the jobs are simply held.
update public.job_queue
set status = 'processing', locked_by = 'w1', locked_until = now() + interval '5 minutes',
    attempt_count = 1, started_at = now()
where store_id = '10000000-0000-4000-8000-000000000001';
set local role service_role;

-- load_job_context ----------------------------------------------------------------------------
select is(public.load_job_context('50000000-0000-4000-8000-0000000000ff'),
          '{"job": null, "message": null, "store": null, "conversation": null, "reply": null,
            "recent_replies": 0, "store_replies_last_hour": 0, "thread": [],
            "knowledge": []}'::jsonb,
          'an unknown job has an empty context');
select is(
  (select jsonb_build_array(c -> 'job' ->> 'id', c -> 'message' ->> 'id', c -> 'store' ->> 'id',
                            c -> 'conversation' ->> 'id', c -> 'reply', c -> 'recent_replies')
   from public.load_job_context(pg_temp.job_id('<m1@cliente.test>')) c),
  jsonb_build_array(pg_temp.job_id('<m1@cliente.test>'), pg_temp.message_id('<m1@cliente.test>'),
                    '10000000-0000-4000-8000-000000000001',
                    (select conversation_id from public.messages
                     where id = pg_temp.message_id('<m1@cliente.test>')),
                    null, 0),
  'the context holds the job, its message, store and conversation; no reply yet');
select is(public.load_job_context(pg_temp.job_id('<m1@cliente.test>')) -> 'message' ->> 'body_text',
          'Cadê meu pedido?', 'the message row is complete');

-- save_reply ----------------------------------------------------------------------------------
create temp table ids (name text primary key, id uuid);
grant all on ids to service_role;
insert into ids
select 'r1', (public.save_reply(pg_temp.job_id('<m1@cliente.test>'),
                                pg_temp.message_id('<m1@cliente.test>'),
                                pg_temp.reply_draft('<job-1@loja.test>'))).id;
select is(row((pg_temp.reply(id)).status, (pg_temp.reply(id)).to_address,
              (pg_temp.reply(id)).job_id, (pg_temp.reply(id)).store_id,
              (pg_temp.reply(id))."references", (pg_temp.reply(id)).intent)::text,
          row('drafted', 'ana@cliente.test', pg_temp.job_id('<m1@cliente.test>'),
              '10000000-0000-4000-8000-000000000001'::uuid,
              array['<m0@cliente.test>', '<m1@cliente.test>'], 'order_status')::text,
          'save_reply stores a drafted reply for the message')
from ids where name = 'r1';
select is((public.save_reply(pg_temp.job_id('<m1@cliente.test>'),
                             pg_temp.message_id('<m1@cliente.test>'),
                             pg_temp.reply_draft('<job-1-bis@loja.test>',
                                                 '{"body_text": "Outro texto"}'))).id,
          (select id from ids where name = 'r1'), 'saving again returns the same reply');
select is(row((pg_temp.reply(id)).body_text, (pg_temp.reply(id)).smtp_message_id)::text,
          row('Olá Ana', '<job-1@loja.test>')::text, '... unchanged')
from ids where name = 'r1';
select is((select count(*)::int from public.replies
           where message_id = pg_temp.message_id('<m1@cliente.test>')), 1,
          'still one reply for the message');
select is(public.load_job_context(pg_temp.job_id('<m1@cliente.test>')) -> 'reply' ->> 'id',
          (select id::text from ids where name = 'r1'), 'the context now includes the reply');
insert into ids
select 'held', (public.save_reply(pg_temp.job_id('<m4@cliente.test>'),
                                  pg_temp.message_id('<m4@cliente.test>'),
                                  pg_temp.reply_draft('<job-4@loja.test>', jsonb_build_object(
                                    'to_address', 'caio@cliente.test', 'hold', true,
                                    'hold_reason', 'customer asked for a human')))).id;
select is(row((pg_temp.reply(id)).status, (pg_temp.reply(id)).hold_reason)::text,
          row('held', 'customer asked for a human')::text, 'hold: true keeps it as a draft')
from ids where name = 'held';
select throws_ok($$select public.save_reply(null, '30000000-0000-4000-8000-0000000000ff',
                                            pg_temp.reply_draft('<x@loja.test>'))$$,
                 'P0002', null, 'a reply to an unknown message is refused');
select throws_ok($$select public.save_reply(null, pg_temp.message_id('<m2@cliente.test>'),
                                            pg_temp.reply_draft('<job-1@loja.test>'))$$,
                 '23505', null, 'an SMTP Message-ID is never reused for another reply');
select throws_ok($$select public.save_reply(null, pg_temp.message_id('<m2@cliente.test>'),
                                            '{"subject": "no recipient"}')$$,
                 '22023', null, 'a reply needs a recipient');

-- begin_send / reset_reply / finish_send -------------------------------------------------------
select is(public.begin_send(id), 'ok', 'drafted -> sending: ok') from ids where name = 'r1';
select is(row((pg_temp.reply(id)).status, (pg_temp.reply(id)).sending_at)::text,
          row('sending', now())::text, 'the reply is sending since now') from ids where name = 'r1';
select is(public.begin_send(id), 'in_doubt', 'found in sending: in_doubt')
from ids where name = 'r1';
select is(public.reset_reply(id, 'drafted', 'connection refused'), true,
          'reset sending -> drafted (definitely not sent)') from ids where name = 'r1';
select is(row((pg_temp.reply(id)).status, (pg_temp.reply(id)).error)::text,
          row('drafted', 'connection refused')::text, 'drafted again, with the error')
from ids where name = 'r1';
select is(public.reset_reply(id, 'drafted', 'again'), false,
          'reset of a reply not in sending does nothing') from ids where name = 'r1';
select is(public.begin_send(id), 'ok', 'a retry may send again') from ids where name = 'r1';
select is(public.finish_send(id, pg_temp.job_id('<m1@cliente.test>'), 'w1',
                             '{"outcome": "replied"}'),
          true, 'finish_send by the lease holder completes the job') from ids where name = 'r1';
select is(row((pg_temp.reply(id)).status, (pg_temp.reply(id)).sent_at,
              (pg_temp.reply(id)).error)::text,
          row('sent', now(), null::text)::text, 'the reply is sent')
from ids where name = 'r1';
select is((select row(status, result)::text from public.job_queue
           where id = pg_temp.job_id('<m1@cliente.test>')),
          row('completed', '{"outcome": "replied"}'::jsonb)::text,
          'the job is completed with the result, in the same call');
select is(public.begin_send(id), 'already_sent', 'sent: already_sent') from ids where name = 'r1';
select is(pg_temp.events('reply.sending'),
          (select array[id::text, id::text] from ids where name = 'r1'),
          'a reply.sending event per send attempt');
select is(pg_temp.events('reply.sent'), (select array[id::text] from ids where name = 'r1'),
          'one reply.sent event');
select is((select e.detail ->> 'status' from public.events e
           where e.event_type = 'reply.failed'
             and e.detail ->> 'reply_id' = (select id::text from ids where name = 'r1')),
          'drafted', 'the reset wrote reply.failed with the status it went back to');
select is(public.finish_send(id, pg_temp.job_id('<m1@cliente.test>'), 'w1', '{}'), false,
          'finishing again: the job is no longer held, false') from ids where name = 'r1';
select is(pg_temp.events('reply.sent'), (select array[id::text] from ids where name = 'r1'),
          'and no second reply.sent event');

-- A worker that lost its lease still records the send (the mail went out) but completes nothing.
insert into ids
select 'r2', (public.save_reply(pg_temp.job_id('<m2@cliente.test>'),
                                pg_temp.message_id('<m2@cliente.test>'),
                                pg_temp.reply_draft('<job-2@loja.test>'))).id;
select is(public.begin_send(id), 'ok', 'second reply sending') from ids where name = 'r2';
select is(public.finish_send(id, pg_temp.job_id('<m2@cliente.test>'), 'w-late', '{}'), false,
          'finish_send from a worker without the lease returns false') from ids where name = 'r2';
select is((pg_temp.reply(id)).status, 'sent', 'but the reply is sent regardless')
from ids where name = 'r2';
select is((select status from public.job_queue where id = pg_temp.job_id('<m2@cliente.test>')),
          'processing', 'and the job is untouched');

-- Held and failed replies are never sent.
select is(public.begin_send(id), 'held', 'a held reply: held') from ids where name = 'held';
select is((pg_temp.reply(id)).status, 'held', 'and stays held') from ids where name = 'held';
insert into ids
select 'r3', (public.save_reply(pg_temp.job_id('<m3@cliente.test>'),
                                pg_temp.message_id('<m3@cliente.test>'),
                                pg_temp.reply_draft('<job-3@loja.test>', jsonb_build_object(
                                  'to_address', 'bia.work@cliente.test')))).id;
select is(public.begin_send(id), 'ok', 'third reply sending') from ids where name = 'r3';
select is(public.reset_reply(id, 'held', 'delivery_in_doubt'), true,
          'an in-doubt send can be held for a person') from ids where name = 'r3';
select is(row((pg_temp.reply(id)).status, (pg_temp.reply(id)).hold_reason)::text,
          row('held', 'delivery_in_doubt')::text, 'held, with the reason')
from ids where name = 'r3';
select is(pg_temp.events('reply.held'), (select array[id::text] from ids where name = 'r3'),
          'a reply.held event');
update public.replies set status = 'sending', hold_reason = null
where id = (select id from ids where name = 'r3');
select is(public.reset_reply(id, 'failed', '550 mailbox unavailable'), true,
          'reset sending -> failed') from ids where name = 'r3';
select is(public.begin_send(id), 'failed', 'a failed reply: failed') from ids where name = 'r3';
select is(public.reset_reply(id, 'drafted', 'x'), false, 'failed is final for reset_reply')
from ids where name = 'r3';
select throws_ok(format('select public.reset_reply(%L, %L, null)', id, 'sent'), '22023', null,
                 'reset_reply only goes to drafted, failed or held') from ids where name = 'r3';
select throws_ok($$select public.begin_send('40000000-0000-4000-8000-0000000000ff')$$, 'P0002',
                 null, 'begin_send of an unknown reply');
select throws_ok($$select public.finish_send('40000000-0000-4000-8000-0000000000ff', null, 'w1',
                                             null)$$,
                 'P0002', null, 'finish_send of an unknown reply');

-- recent_replies: sent or sending to the sender (or its Reply-To) within the window, not counting
-- the message's own reply.
select is((public.load_job_context(pg_temp.job_id('<m2@cliente.test>')) ->> 'recent_replies')::int,
          1, 'm2 sees the reply sent to ana for m1 (its own is not counted)');
select is((public.load_job_context(pg_temp.job_id('<m1@cliente.test>')) ->> 'recent_replies')::int,
          1, 'm1 sees the reply for m2');
select is((public.load_job_context(pg_temp.job_id('<m4@cliente.test>')) ->> 'recent_replies')::int,
          0, 'held replies do not count');
select is((public.load_job_context(pg_temp.job_id('<m2@cliente.test>'), 0) ->> 'recent_replies')::int,
          0, 'nothing is recent in a zero-hour window');
reset role;
update public.replies set sending_at = now() - interval '25 hours'
where id = (select id from ids where name = 'r1');
set local role service_role;
select is((public.load_job_context(pg_temp.job_id('<m2@cliente.test>')) ->> 'recent_replies')::int,
          0, 'a reply 25 hours ago is outside the 24-hour window');
reset role;
update public.replies set sending_at = now() - interval '23 hours'
where id = (select id from ids where name = 'r1');
set local role service_role;
select is((public.load_job_context(pg_temp.job_id('<m2@cliente.test>')) ->> 'recent_replies')::int,
          1, 'a reply 23 hours ago is within it');
select is((public.load_job_context(pg_temp.job_id('<m3@cliente.test>'), 48)
           ->> 'recent_replies')::int,
          0, 'replies to other customers never count');

-- Credits -------------------------------------------------------------------------------------
select is(public.reserve_credit('10000000-0000-4000-8000-000000000001',
                                '50000000-0000-4000-8000-000000000001'),
          'reserved', 'a credit is reserved');
select is(pg_temp.credits(), 1, 'the balance went down by one');
select is(public.reserve_credit('10000000-0000-4000-8000-000000000001',
                                '50000000-0000-4000-8000-000000000001'),
          'already_reserved', 'the same job again: already_reserved');
select is(pg_temp.credits(), 1, 'and charged nothing');
select is(public.reserve_credit('10000000-0000-4000-8000-000000000001',
                                '50000000-0000-4000-8000-000000000002'),
          'reserved', 'another job takes the last credit');
select is(public.reserve_credit('10000000-0000-4000-8000-000000000001',
                                '50000000-0000-4000-8000-000000000003'),
          'no_credits', 'with none left: no_credits');
select is(pg_temp.credits(), 0, 'the balance stays at zero');
select is((select array_agg(row(job_id, delta, reason)::text order by id) from public.credit_ledger
           where store_id = '10000000-0000-4000-8000-000000000001'),
          array[row('50000000-0000-4000-8000-000000000001'::uuid, -1, 'reply')::text,
                row('50000000-0000-4000-8000-000000000002'::uuid, -1, 'reply')::text],
          'the ledger has one charge per reserved job');
select is((public.load_job_context(pg_temp.job_id('<m3@cliente.test>'))
           ->> 'store_replies_last_hour')::int,
          2, 'the store''s reservations of the last hour are counted for the early rate check');
select is((select count(*)::int from public.events
           where store_id = '10000000-0000-4000-8000-000000000001'
             and event_type = 'credit.charged'), 2, 'a credit.charged event per charge');

select is(public.release_credit('10000000-0000-4000-8000-000000000001',
                                '50000000-0000-4000-8000-000000000001', 'smtp 550'),
          true, 'a reserved credit is refunded');
select is(pg_temp.credits(), 1, 'the balance is back up');
select is(public.release_credit('10000000-0000-4000-8000-000000000001',
                                '50000000-0000-4000-8000-000000000001', 'smtp 550'),
          false, 'but only once');
select is(public.release_credit('10000000-0000-4000-8000-000000000001',
                                '50000000-0000-4000-8000-000000000003', 'never charged'),
          false, 'a job never charged is not refunded');
select is(pg_temp.credits(), 1, 'the balance is unchanged by those');
select is((select detail ->> 'reason' from public.events
           where job_id = '50000000-0000-4000-8000-000000000001'
             and event_type = 'credit.refunded'),
          'smtp 550', 'credit.refunded records why');
select is(public.reserve_credit('10000000-0000-4000-8000-000000000001',
                                '50000000-0000-4000-8000-000000000001'),
          'already_reserved', 'a refunded job is not charged a second time');
select throws_ok($$select public.reserve_credit('10000000-0000-4000-8000-0000000000ff',
                                                '50000000-0000-4000-8000-000000000009')$$,
                 'P0002', null, 'reserve_credit on an unknown store');

select is(public.admin_add_credits('10000000-0000-4000-8000-000000000001', 10), 11,
          'admin_add_credits returns the new balance');
select is(public.admin_add_credits('10000000-0000-4000-8000-000000000001', -11, 'adjustment'), 0,
          'a negative adjustment down to zero');
select throws_ok($$select public.admin_add_credits('10000000-0000-4000-8000-000000000001', -1,
                                                   'adjustment')$$,
                 '23514', null, 'but never below zero');
select throws_ok($$select public.admin_add_credits('10000000-0000-4000-8000-000000000001', 0)$$,
                 '22023', null, 'a zero amount is refused');
select throws_ok($$select public.admin_add_credits('10000000-0000-4000-8000-000000000001', 1,
                                                   'refund')$$,
                 '22023', null, 'refunds belong to release_credit');
select is((select array_agg(row(delta, reason)::text order by id) from public.credit_ledger
           where store_id = '10000000-0000-4000-8000-000000000001' and job_id is null),
          array[row(10, 'topup')::text, row(-11, 'adjustment')::text],
          'top-ups and adjustments are in the ledger');
select is((select sum(delta)::int from public.credit_ledger
           where store_id = '10000000-0000-4000-8000-000000000001'), pg_temp.credits() - 2,
          'the ledger explains the balance (from the initial 2)');

select * from finish();
rollback;
