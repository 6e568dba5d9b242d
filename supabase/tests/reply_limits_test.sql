-- Reply limits: sender_key normalises addresses for the cap; reserve_reply checks the
-- per-customer cap and the per-store hourly rate where the credit is reserved, under the store
-- row's lock, so concurrent jobs of one sender cannot all pass. Runs as service_role except the
-- concurrency part, which commits fixtures through dblink and removes them at the end.
begin;
select plan(27);

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

-- Concurrency: sessions of one sender at once; only the cap is reserved. -------------------
create extension if not exists dblink with schema extensions;
create function pg_temp.open(p_name text) returns void language plpgsql as $$
begin
  perform extensions.dblink_connect(p_name, format(
    'host=%s port=%s dbname=%s user=%s', split_part(current_setting('unix_socket_directories'),
    ',', 1), current_setting('port'), current_database(), current_user));
end;
$$;
select pg_temp.open(s) from unnest(array['setup', 'a', 'b', 'c', 'd']) s;
select extensions.dblink_exec('setup', $q$
  delete from public.stores where id = '10000000-0000-4000-8000-0000000000a2';
  insert into public.stores (id, name, support_email, imap_host, imap_port, imap_user, smtp_host,
                             smtp_port, smtp_user, credits)
  values ('10000000-0000-4000-8000-0000000000a2', 'Corrida', 'help@corrida.test', 'imap.c.test',
          993, 'help', 'smtp.c.test', 587, 'help', 50)
$q$);
select extensions.dblink_exec(s, 'set role service_role')
from unnest(array['a', 'b', 'c', 'd']) s;
-- Session a holds the store lock with the first reservation uncommitted while b, c and d ask.
select extensions.dblink_exec('a', 'begin');
select is((select r from extensions.dblink('a', $q$select public.reserve_reply(
             '10000000-0000-4000-8000-0000000000a2', '50000000-0000-4000-8000-0000000000e1',
             'mallory@example.com', 2, 24, null)$q$) as t(r text)),
          'reserved', 'session a reserves (uncommitted)');
select extensions.dblink_send_query(s, format(
         'select public.reserve_reply(%L, %L, %L, 2, 24, null)',
         '10000000-0000-4000-8000-0000000000a2', '50000000-0000-4000-8000-0000000000e' || (n + 1),
         'Mallory+' || s || '@Example.com'))
from unnest(array['b', 'c', 'd']) with ordinality as t(s, n);
select pg_sleep(0.2);
select extensions.dblink_exec('a', 'commit');
create function pg_temp.result(p_name text) returns text language plpgsql as $$
declare
  v text;
begin
  select r into v from extensions.dblink_get_result(p_name) as t(r text);
  perform * from extensions.dblink_get_result(p_name) as t(r text);
  return v;
end;
$$;
select is((select array_agg(r order by r) from unnest(array['b', 'c', 'd']) s,
                 lateral pg_temp.result(s) r),
          array['reply_cap', 'reply_cap', 'reserved'],
          'of four concurrent reservations for one sender, exactly the cap of 2 succeed');
select is((select n from extensions.dblink('setup', $q$select count(*)::int from
             public.credit_ledger where store_id = '10000000-0000-4000-8000-0000000000a2'$q$)
           as t(n int)),
          2, 'two charges in the ledger');
select extensions.dblink_exec('setup', $q$
  delete from public.events where store_id = '10000000-0000-4000-8000-0000000000a2';
  delete from public.stores where id = '10000000-0000-4000-8000-0000000000a2';
$q$);

select * from finish();
rollback;
