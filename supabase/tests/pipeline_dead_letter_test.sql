-- Every path into the dead-letter queue settles what the job leaves behind
-- (settle_dead_lettered_job, fired by the job_queue_dead_lettered trigger): the credit of a
-- reply that never left is refunded, the reply row ends in an explicit state, and an event says
-- why. Paths: fail_job (permanent, and out of attempts), dequeue_jobs dead-lettering an expired
-- lease with no attempts left, and a direct update; and both of the first two for a send_reply
-- job (the console's approved reply), whose reply and charge are not keyed by its own id.
-- Runs as service_role.
begin;
select plan(51);

insert into public.stores (id, name, support_email, imap_host, imap_port, imap_user, smtp_host,
                           smtp_port, smtp_user, credits)
values ('10000000-0000-4000-8000-0000000000d1', 'Loja', 'help@dl.test', 'imap.dl.test', 993,
        'help', 'smtp.dl.test', 587, 'help', 10);

create function pg_temp.msg(p_uid int) returns jsonb language sql as $$
  select jsonb_build_object('message_id', format('<dl%s@cliente.test>', p_uid), 'uid', p_uid,
                            'from_address', format('c%s@cliente.test', p_uid),
                            'subject', 'Pedido', 'body_text', 'Cadê meu pedido?')
$$;
create function pg_temp.job(p_uid int) returns uuid language sql as $$
  select q.id from public.job_queue q
  where q.idempotency_key = format('email:10000000-0000-4000-8000-0000000000d1:<dl%s@cliente.test>',
                                   p_uid)
$$;
create function pg_temp.reply_status(p_uid int) returns text language sql as $$
  select r.status from public.replies r where r.job_id = pg_temp.job(p_uid)
$$;
create function pg_temp.refunds(p_uid int) returns int language sql as $$
  select count(*)::int from public.credit_ledger l
  where l.job_id = pg_temp.job(p_uid) and l.reason = 'refund'
$$;
create function pg_temp.settled(p_uid int) returns jsonb language sql as $$
  select e.detail from public.events e
  where e.job_id = pg_temp.job(p_uid) and e.event_type = 'job.dead_letter_settled'
  order by e.id desc limit 1
$$;
create function pg_temp.credits() returns int language sql as $$
  select credits from public.stores where id = '10000000-0000-4000-8000-0000000000d1'
$$;
-- A charged job with a reply in the given state (null: charged, no reply yet).
create function pg_temp.prepare(p_uid int, p_reply_status text) returns void
language plpgsql as $$
declare
  v_reply public.replies;
begin
  perform public.reserve_credit('10000000-0000-4000-8000-0000000000d1', pg_temp.job(p_uid));
  if p_reply_status is null then
    return;
  end if;
  v_reply := public.save_reply(
    pg_temp.job(p_uid),
    (select (q.payload ->> 'message_id')::uuid from public.job_queue q
     where q.id = pg_temp.job(p_uid)),
    jsonb_build_object('to_address', format('c%s@cliente.test', p_uid), 'subject', 'Re: Pedido',
                       'body_text', 'Olá', 'smtp_message_id', format('<r%s@dl.test>', p_uid),
                       'hold', p_reply_status = 'held', 'hold_reason', 'review'));
  if p_reply_status in ('sending', 'sent') then
    perform public.begin_send(v_reply.id);
  end if;
  if p_reply_status = 'sent' then
    update public.replies set status = 'sent', sent_at = now() where id = v_reply.id;
  end if;
end;
$$;
grant execute on all functions in schema pg_temp to service_role;

set local role service_role;
select lives_ok($$select public.ingest_messages(
  '10000000-0000-4000-8000-0000000000d1', 'INBOX', 1, 8, jsonb_build_array(
    pg_temp.msg(1), pg_temp.msg(2), pg_temp.msg(3), pg_temp.msg(4), pg_temp.msg(5),
    pg_temp.msg(6), pg_temp.msg(7), pg_temp.msg(8)))$$,
  'eight customer emails are ingested');
reset role;
-- The jobs are held by worker w1 (the claim itself is the queue's business).
update public.job_queue
set status = 'processing', locked_by = 'w1', locked_until = now() + interval '5 minutes',
    attempt_count = 1, max_attempts = 3, started_at = now(), job_type = 'dl_test'
where store_id = '10000000-0000-4000-8000-0000000000d1';
set local role service_role;

select pg_temp.prepare(1, 'drafted'), pg_temp.prepare(2, null), pg_temp.prepare(3, 'sending'),
       pg_temp.prepare(4, 'sent'), pg_temp.prepare(5, 'held'), pg_temp.prepare(6, 'drafted'),
       pg_temp.prepare(8, 'drafted');
select is(pg_temp.credits(), 4, 'seven jobs were charged, the held draft of job 5 refunded as it was held');

-- fail_job, permanent: a drafted reply never left -------------------------------------------
select is(public.fail_job(pg_temp.job(1), 'w1', 'claude 400', 'permanent'), 'dead_letter',
          'a permanent failure dead-letters the job');
select is(pg_temp.reply_status(1), 'failed', 'its drafted reply ends failed');
select is((select error from public.replies where job_id = pg_temp.job(1)),
          'dead_lettered: claude 400', 'the reply says why');
select is(pg_temp.refunds(1), 1, 'its credit is refunded');
select is(pg_temp.settled(1) ->> 'error', 'claude 400', 'the settle event records why');
select is((pg_temp.settled(1) ->> 'refunded')::boolean, true, 'and that it refunded');

-- fail_job, out of attempts: charged, no reply yet --------------------------------------------
update public.job_queue set attempt_count = 3 where id = pg_temp.job(2);
select is(public.fail_job(pg_temp.job(2), 'w1', 'HTTP 503'), 'dead_letter',
          'a transient failure with no attempts left dead-letters the job');
select is(pg_temp.refunds(2), 1, 'a job dead-lettered before drafting is refunded');
select is(pg_temp.settled(2) ->> 'reply_status', null, 'there was no reply to settle');

-- a reply left sending may have gone out: charged, held for a person --------------------------
select is(public.fail_job(pg_temp.job(3), 'w1', 'boom', 'permanent'), 'dead_letter',
          'a job whose reply is sending is dead-lettered');
select is(pg_temp.reply_status(3), 'held', 'its sending reply is held, not left sending');
select is((select hold_reason from public.replies where job_id = pg_temp.job(3)),
          'delivery_in_doubt', 'held as delivery in doubt');
select is(pg_temp.refunds(3), 0, 'a reply that may have gone out stays charged');

-- sent and held replies stay as they are, charged ---------------------------------------------
select is(public.fail_job(pg_temp.job(4), 'w1', 'late', 'permanent'), 'dead_letter', 'job 4 dead');
select is(pg_temp.reply_status(4), 'sent', 'a sent reply stays sent');
select is(pg_temp.refunds(4), 0, 'a sent reply stays charged');
select is(public.fail_job(pg_temp.job(5), 'w1', 'late', 'permanent'), 'dead_letter', 'job 5 dead');
select is(pg_temp.reply_status(5), 'held', 'a held draft stays held for its reviewer');
select is(pg_temp.refunds(5), 1, 'a held draft was refunded when held (a send is charged)');

-- dequeue_jobs: the lease expired on the last attempt (the worker died every time) -------------
update public.job_queue
set attempt_count = max_attempts, locked_until = now() - interval '1 second'
where id = pg_temp.job(6);
select is_empty($$select * from public.dequeue_jobs('w2', 10, 60, array['dl_test'])$$,
                'the claim finds nothing to run, only an expired lease to settle');
select is((select status from public.job_queue where id = pg_temp.job(6)), 'dead_letter',
          'the claim dead-lettered the expired job');
select is(pg_temp.reply_status(6), 'failed', 'its drafted reply ends failed');
select is(pg_temp.refunds(6), 1, 'the poison job gives its credit back');
select alike(pg_temp.settled(6) ->> 'error', 'lease expired%', 'the event says the lease expired');

-- not dead-lettered: nothing is settled --------------------------------------------------------
select is(public.fail_job(pg_temp.job(7), 'w1', 'HTTP 503'), 'pending', 'a retry is scheduled');
select is(pg_temp.settled(7), null, 'a retried job is not settled');

-- a job with neither a charge nor a reply has nothing to settle ---------------------------------
reset role;
update public.job_queue set status = 'dead_letter', dead_lettered_at = now()
where id = pg_temp.job(7);
set local role service_role;
select is(pg_temp.settled(7), null, 'an uncharged job without a reply records no settle event');
select is(pg_temp.refunds(7), 0, 'and is refunded nothing');

-- any other path, e.g. an operator's update, settles too --------------------------------------
reset role;
update public.job_queue set status = 'dead_letter', dead_lettered_at = now(),
                            last_error = 'operator' where id = pg_temp.job(8);
set local role service_role;
select is(pg_temp.refunds(8), 1, 'a job dead-lettered by hand is refunded');

-- requeueing gives the dead-lettered draft its chance again ------------------------------------
select is(public.requeue_dlq_job(pg_temp.job(1)), true, 'job 1 is requeued');
select is(pg_temp.reply_status(1), 'drafted', 'its reply is a draft again, ready to send');

select is(pg_temp.credits(), 8, 'refunded: jobs 1, 2, 5 (held), 6 and 8; charged: 3 and 4');

-- send_reply: a reply a person approved --------------------------------------------------------
-- Its reply is the payload's reply_id and its charge the one keyed by the reply's job_id (the
-- charge console_send_reply took when the person sent it, charge_for_send), not the send job's
-- own id.
reset role;
create function pg_temp.reply_id(p_uid int) returns uuid language sql as $$
  select r.id from public.replies r
  where r.message_id = (select (q.payload ->> 'message_id')::uuid from public.job_queue q
                        where q.id = pg_temp.job(p_uid))
$$;
create function pg_temp.send_status(p_uid int) returns text language sql as $$
  select r.status from public.replies r where r.id = pg_temp.reply_id(p_uid)
$$;
create function pg_temp.send_refunds(p_uid int) returns int language sql as $$
  select count(*)::int from public.credit_ledger l
  where l.job_id = (select r.job_id from public.replies r where r.id = pg_temp.reply_id(p_uid))
    and l.reason = 'refund'
$$;
create function pg_temp.send_job(p_uid int) returns uuid language sql as $$
  select q.id from public.job_queue q
  where q.job_type = 'send_reply' and q.payload ->> 'reply_id' = pg_temp.reply_id(p_uid)::text
$$;
create function pg_temp.send_settled(p_uid int) returns jsonb language sql as $$
  select e.detail from public.events e
  where e.job_id = pg_temp.send_job(p_uid) and e.event_type = 'job.dead_letter_settled'
  order by e.id desc limit 1
$$;
grant execute on function pg_temp.reply_id(int), pg_temp.send_job(int),
                         pg_temp.send_settled(int), pg_temp.send_status(int),
                         pg_temp.send_refunds(int) to service_role;
set local role service_role;

select lives_ok($$select public.ingest_messages(
  '10000000-0000-4000-8000-0000000000d1', 'INBOX', 1, 10,
  jsonb_build_array(pg_temp.msg(9), pg_temp.msg(10)))$$,
  'two more customer emails are ingested');
reset role;
update public.job_queue
set status = 'processing', locked_by = 'w1', locked_until = now() + interval '5 minutes',
    attempt_count = 1, max_attempts = 3, started_at = now(), job_type = 'dl_test'
where id in (pg_temp.job(9), pg_temp.job(10));
set local role service_role;
select pg_temp.prepare(9, 'held'), pg_temp.prepare(10, 'held');
select is(pg_temp.credits(), 8, 'the email jobs 9 and 10 held their drafts, uncharged');
select is(public.complete_job(pg_temp.job(9), 'w1'), true, 'email job 9 is done (held)');
select is(public.complete_job(pg_temp.job(10), 'w1'), true, 'email job 10 is done (held)');
-- What console_send_reply does once a person approves: charged now, drafted again, one
-- send_reply job.
reset role;
update public.replies
set status = 'drafted', hold_reason = null,
    job_id = public.charge_for_send(store_id, job_id, to_address)
where id in (pg_temp.reply_id(9), pg_temp.reply_id(10));
select public.console_enqueue_send(r, r.job_id) from public.replies r
where r.id in (pg_temp.reply_id(9), pg_temp.reply_id(10));
update public.job_queue
set status = 'processing', locked_by = 'w1', locked_until = now() + interval '5 minutes',
    attempt_count = 1, max_attempts = 3, started_at = now()
where id in (pg_temp.send_job(9), pg_temp.send_job(10));
set local role service_role;
select is(pg_temp.credits(), 6, 'sending them charged one credit each');

-- fail_job, permanent
select is(public.fail_job(pg_temp.send_job(9), 'w1', 'smtp 550', 'permanent'), 'dead_letter',
          'a permanent send failure dead-letters the send_reply job');
select is(pg_temp.send_status(9), 'failed', 'the approved reply that never left ends failed');
select is((select error from public.replies where id = pg_temp.reply_id(9)),
          'dead_lettered: smtp 550', 'the reply says why');
select is(pg_temp.send_refunds(9), 1, 'the charge its sending took is refunded');
select is((pg_temp.send_settled(9) ->> 'reply_id')::uuid, pg_temp.reply_id(9),
          'the settle event of the send job names the reply');
select is((pg_temp.send_settled(9) ->> 'refunded')::boolean, true, 'and that it refunded');

-- dequeue_jobs: the send job's lease expired on its last attempt (the worker died every time)
update public.job_queue
set attempt_count = max_attempts, locked_until = now() - interval '1 second'
where id = pg_temp.send_job(10);
select is_empty($$select * from public.dequeue_jobs('w2', 10, 60, array['send_reply'])$$,
                'the claim finds no send job to run, only an expired lease to settle');
select is((select status from public.job_queue where id = pg_temp.send_job(10)), 'dead_letter',
          'the claim dead-lettered the expired send job');
select is(pg_temp.send_status(10), 'failed', 'its approved reply ends failed');
select is(pg_temp.send_refunds(10), 1, 'the poison send job gives the credit back');
select alike(pg_temp.send_settled(10) ->> 'error', 'lease expired%',
             'the event says the lease expired');

select is(pg_temp.credits(), 8, 'both approved replies that never left were refunded');

select * from finish();
rollback;
