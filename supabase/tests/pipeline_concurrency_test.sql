-- Concurrency: reserve_credit never overdraws and stays idempotent per job, and two fetch runs
-- storing the same message produce one message and one job. Other sessions only see committed
-- data, so the fixtures are committed through dblink and removed at the end; the second session
-- is observed waiting on the first (pg_stat_activity) before the first commits, so the race is
-- really exercised rather than left to timing.
begin;
select plan(17);

create extension if not exists dblink with schema extensions;

-- Sessions over the local socket as the same superuser; each acts as service_role.
create function pg_temp.open(p_name text) returns int language plpgsql as $$
begin
  perform extensions.dblink_connect(p_name, format(
    'host=%s port=%s dbname=%s user=%s application_name=pgtap_%s',
    split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port'),
    current_database(), current_user, p_name));
  perform extensions.dblink_exec(p_name, 'set role service_role');
  return (select pid from extensions.dblink(p_name, 'select pg_backend_pid()') as t(pid int));
end;
$$;

-- Waits until the backend is blocked on a lock; true once it is. Bounded so a broken build
-- fails the test instead of hanging the suite.
create function pg_temp.blocked(p_pid int) returns boolean language plpgsql as $$
begin
  for i in 1..3000 loop
    if exists (select 1 from pg_stat_activity
               where pid = p_pid and wait_event_type = 'Lock') then
      return true;
    end if;
    perform pg_sleep(0.01);
  end loop;
  return false;
end;
$$;

create function pg_temp.result(p_name text) returns text language plpgsql as $$
declare
  v text;
begin
  select r into v from extensions.dblink_get_result(p_name) as t(r text);
  perform * from extensions.dblink_get_result(p_name) as t(r text);  -- drains the connection
  return v;
end;
$$;

create function pg_temp.cleanup() returns void language plpgsql as $$
begin
  perform extensions.dblink_exec('setup', $q$
    delete from public.job_queue where store_id = '10000000-0000-4000-8000-0000000000cc';
    delete from public.events where store_id = '10000000-0000-4000-8000-0000000000cc';
    delete from public.stores where id = '10000000-0000-4000-8000-0000000000cc';
  $q$);
end;
$$;

select extensions.dblink_connect('setup', format(
  'host=%s port=%s dbname=%s user=%s', split_part(current_setting('unix_socket_directories'), ',', 1),
  current_setting('port'), current_database(), current_user));
select pg_temp.cleanup();
select extensions.dblink_exec('setup', $q$
  insert into public.stores (id, name, support_email, imap_host, imap_port, imap_user, smtp_host,
                             smtp_port, smtp_user, credits)
  values ('10000000-0000-4000-8000-0000000000cc', 'Concorrida', 'help@concorrida.test',
          'imap.c.test', 993, 'help', 'smtp.c.test', 587, 'help', 1)
$q$);

create temp table pids (name text primary key, pid int);
insert into pids values ('a', pg_temp.open('a')), ('b', pg_temp.open('b'));

-- 1. The last credit, wanted by two jobs at once: one gets it, the other sees none.
select extensions.dblink_exec('a', 'begin');
select is((select r from extensions.dblink('a', $q$select public.reserve_credit(
             '10000000-0000-4000-8000-0000000000cc', '50000000-0000-4000-8000-0000000000c1')$q$)
           as t(r text)),
          'reserved', 'session a reserves the last credit (uncommitted)');
select extensions.dblink_send_query('b', $q$select public.reserve_credit(
  '10000000-0000-4000-8000-0000000000cc', '50000000-0000-4000-8000-0000000000c2')$q$);
select ok(pg_temp.blocked((select pid from pids where name = 'b')),
          'session b waits for a instead of reading the stale balance');
select extensions.dblink_exec('a', 'commit');
select is(pg_temp.result('b'), 'no_credits', 'b then finds no credit left');
select is((select c from extensions.dblink('setup', $q$select credits from public.stores
             where id = '10000000-0000-4000-8000-0000000000cc'$q$) as t(c int)),
          0, 'the balance is zero, never negative');

-- 2. The same job twice at once (a retried job racing itself): one charge.
select extensions.dblink_exec('setup', $q$update public.stores set credits = 5
                                        where id = '10000000-0000-4000-8000-0000000000cc'$q$);
select extensions.dblink_exec('a', 'begin');
select is((select r from extensions.dblink('a', $q$select public.reserve_credit(
             '10000000-0000-4000-8000-0000000000cc', '50000000-0000-4000-8000-0000000000c3')$q$)
           as t(r text)),
          'reserved', 'session a reserves for job c3');
select extensions.dblink_send_query('b', $q$select public.reserve_credit(
  '10000000-0000-4000-8000-0000000000cc', '50000000-0000-4000-8000-0000000000c3')$q$);
select ok(pg_temp.blocked((select pid from pids where name = 'b')), 'session b waits for a');
select extensions.dblink_exec('a', 'commit');
select is(pg_temp.result('b'), 'already_reserved', 'b sees the job already charged');
select is((select row(c, n)::text from extensions.dblink('setup', $q$
             select s.credits, (select count(*)::int from public.credit_ledger l
                                where l.job_id = '50000000-0000-4000-8000-0000000000c3')
             from public.stores s where s.id = '10000000-0000-4000-8000-0000000000cc'$q$)
           as t(c int, n int)),
          row(4, 1)::text, 'one credit taken, one ledger row');

-- 3. Four sessions, two credits, four different jobs, all at once.
select extensions.dblink_exec('setup', $q$update public.stores set credits = 2
                                        where id = '10000000-0000-4000-8000-0000000000cc'$q$);
insert into pids values ('c', pg_temp.open('c')), ('d', pg_temp.open('d'));
select extensions.dblink_send_query(s, format(
         'select public.reserve_credit(%L, %L)', '10000000-0000-4000-8000-0000000000cc',
         '50000000-0000-4000-8000-0000000000d' || s))
from unnest(array['a', 'b', 'c', 'd']) s;
select is((select array_agg(r order by r) from unnest(array['a', 'b', 'c', 'd']) s,
                 lateral pg_temp.result(s) r),
          array['no_credits', 'no_credits', 'reserved', 'reserved'],
          'exactly as many reservations succeed as there were credits');
select is((select c from extensions.dblink('setup', $q$select credits from public.stores
             where id = '10000000-0000-4000-8000-0000000000cc'$q$) as t(c int)),
          0, 'and the balance ends at zero');

-- 4. Two fetch runs store the same message at once.
select extensions.dblink_exec('a', 'begin');
select is((select r from extensions.dblink('a', $q$select public.ingest_messages(
             '10000000-0000-4000-8000-0000000000cc', 'INBOX', 1, 1,
             '[{"message_id": "<race@cliente.test>", "uid": 1, "from_address": "r@c.test"}]')
             ->> 'stored'$q$) as t(r text)),
          '1', 'session a stores the message (uncommitted)');
select extensions.dblink_send_query('b', $q$select public.ingest_messages(
  '10000000-0000-4000-8000-0000000000cc', 'INBOX', 1, 1,
  '[{"message_id": "<race@cliente.test>", "uid": 1, "from_address": "r@c.test"}]')::text$q$);
select ok(pg_temp.blocked((select pid from pids where name = 'b')),
          'the second fetch run waits for the first');
select extensions.dblink_exec('a', 'commit');
select is(pg_temp.result('b')::jsonb - 'job_ids',
          '{"stored": 0, "duplicates": 1, "skipped": 0, "last_uid": 1}'::jsonb,
          'and then sees the message as a duplicate');
select is((select n from extensions.dblink('setup', $q$select count(*)::int from public.messages
             where store_id = '10000000-0000-4000-8000-0000000000cc'$q$) as t(n int)),
          1, 'one message stored');
select is((select n from extensions.dblink('setup', $q$select count(*)::int from public.job_queue
             where store_id = '10000000-0000-4000-8000-0000000000cc'$q$) as t(n int)),
          1, 'one job enqueued');
select is((select n from extensions.dblink('setup', $q$select count(*)::int from public.events
             where store_id = '10000000-0000-4000-8000-0000000000cc'
               and event_type = 'message.duplicate'$q$) as t(n int)),
          1, 'the loser recorded a message.duplicate event');

select pg_temp.cleanup();
select is((select n from extensions.dblink('setup', $q$select count(*)::int from public.stores
             where id = '10000000-0000-4000-8000-0000000000cc'$q$) as t(n int)),
          0, 'committed fixtures are removed');
select extensions.dblink_disconnect(s) from unnest(array['a', 'b', 'c', 'd', 'setup']) s;

select * from finish();
rollback;
