-- Reply limits: sender_key normalises addresses for the cap; reserve_reply checks the
-- per-customer cap and the per-store hourly rate where the credit is reserved, under the store
-- row's lock, so concurrent jobs of one sender cannot all pass. Runs as service_role except the
-- concurrency part, which commits fixtures through dblink and removes them at the end.
begin;
select plan(24);

-- sender_key --------------------------------------------------------------------------------
select is(public.sender_key('Ana.Souza+loja@GMail.com'), 'anasouza@gmail.com',
          'Gmail: case, plus-tag and dots');
select is(public.sender_key('ana.souza@googlemail.com'), 'anasouza@gmail.com',
          'googlemail.com is Gmail');
select is(public.sender_key('  Ana.Souza+x@Example.COM '), 'ana.souza@example.com',
          'elsewhere: case and plus-tag, dots kept');
select is(public.sender_key('+tag@example.com'), '+tag@example.com',
          'a local part that is only a tag is kept');
select is(public.sender_key('odd"@"name@example.com'), 'odd"@"name@example.com',
          'the domain starts after the last @');
select is(public.sender_key(null), null, 'null stays null');

-- reserve_reply -----------------------------------------------------------------------------
insert into public.stores (id, name, support_email, imap_host, imap_port, imap_user, smtp_host,
                           smtp_port, smtp_user, credits)
values ('10000000-0000-4000-8000-0000000000a1', 'Limites', 'help@limites.test', 'imap.l.test',
        993, 'help', 'smtp.l.test', 587, 'help', 10);

set local role service_role;

create function pg_temp.reserve(p_job int, p_sender text, p_cap int default 2,
                                p_per_hour int default null) returns text
language sql as $$
  select public.reserve_reply('10000000-0000-4000-8000-0000000000a1',
                              ('50000000-0000-4000-8000-' || lpad(p_job::text, 12, '0'))::uuid,
                              p_sender, p_cap, 24, p_per_hour)
$$;
create function pg_temp.credits() returns int language sql as $$
  select credits from public.stores where id = '10000000-0000-4000-8000-0000000000a1'
$$;

select is(pg_temp.reserve(1, 'Ana.Souza@gmail.com'), 'reserved', 'first reply to Ana');
select is(pg_temp.reserve(1, 'Ana.Souza@gmail.com'), 'already_reserved', 'idempotent per job');
select is(pg_temp.reserve(2, 'anasouza+promo@googlemail.com'), 'reserved',
          'second reply: another spelling of the same mailbox');
select is(pg_temp.reserve(3, 'ANA.SOUZA@gmail.com'), 'reply_cap',
          'the third reaches the cap of 2, whatever the spelling');
select is(pg_temp.credits(), 8, 'only the two reservations were charged');
select is((select array_agg(sender_key order by id) from public.credit_ledger
           where store_id = '10000000-0000-4000-8000-0000000000a1'),
          array['anasouza@gmail.com', 'anasouza@gmail.com'], 'the ledger keeps the sender key');
select is(pg_temp.reserve(4, 'bia@example.com'), 'reserved', 'another customer is not capped');

select ok(public.release_credit('10000000-0000-4000-8000-0000000000a1',
                                '50000000-0000-4000-8000-000000000002', 'send_failed'),
          'a reply that was never sent is refunded');
select is(pg_temp.reserve(5, 'anasouza@gmail.com'), 'reserved',
          'a refunded reservation does not count against the cap');
select is(pg_temp.reserve(6, 'anasouza@gmail.com'), 'reply_cap', 'and the cap holds again');

update public.credit_ledger set created_at = now() - interval '25 hours'
where job_id = '50000000-0000-4000-8000-000000000001';
select is(pg_temp.reserve(7, 'anasouza@gmail.com'), 'reserved',
          'a reservation older than the window no longer counts');

-- The store's hourly rate counts every sender's reservations of the last hour (4 so far:
-- jobs 4, 5, 7 and the refunded 2 does not count; job 1 is 25 hours old).
select is(pg_temp.reserve(8, 'c1@example.com', 2, 3), 'rate_limited',
          'a fourth reservation within the hour is rate limited at 3 per hour');
select is(pg_temp.reserve(8, 'c1@example.com', 2, 4), 'reserved', 'and passes at 4 per hour');
select is(pg_temp.reserve(9, 'c2@example.com', null, null), 'reserved', 'null limits: no check');

update public.stores set credits = 0 where id = '10000000-0000-4000-8000-0000000000a1';
select is(pg_temp.reserve(10, 'c3@example.com'), 'no_credits', 'no credits left');
select throws_ok($$select public.reserve_reply('10000000-0000-4000-8000-0000000000a1', null,
                   'x@example.com', 3, 24, null)$$, '22023', null, 'a job id is required');

reset role;
select is(array(select r from unnest(array['anon', 'authenticated']) r
                where has_function_privilege(
                  r, 'public.reserve_reply(uuid,uuid,text,integer,integer,integer)', 'EXECUTE')),
          '{}'::text[], 'anon and authenticated may not reserve');
select ok(has_function_privilege('service_role',
            'public.reserve_reply(uuid,uuid,text,integer,integer,integer)', 'EXECUTE'),
          'service_role may');

-- Concurrency (sessions of one sender at once) needs several sessions, which pgTAP under
-- `supabase test db` (as postgres, not a superuser: no passwordless dblink) cannot open: see
-- tests/integration/test_pipeline_concurrency.py.

select * from finish();
rollback;
